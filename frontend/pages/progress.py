"""The analysis page's progress line: tensors, bytes, rate and ETA of the pass, the SVD phase's own
estimate and ETA, and the groups of a fanned-out analysis."""

from __future__ import annotations

from dash import html

from .. import numbers as N


def progress_text(analysis: dict) -> list:
    p = analysis.get("progress") or {}
    status = analysis.get("status")
    if status == "queued":
        return [html.B("Queued"), " · waiting for a worker to pick it up"]
    done, total = p.get("tensors_done") or 0, p.get("tensors_total") or 0
    bdone, btotal = p.get("bytes_done") or 0, p.get("bytes_total") or 0
    bits = [html.B(f"{done} / {total} tensors" if total else "starting"),
            f" · {N.fmt_bytes(bdone)} of {N.fmt_bytes(btotal)}"]
    if p.get("bytes_per_s"):
        bits.append(f" · {N.fmt_bytes(p['bytes_per_s'])}/s")
    if p.get("eta_s") is not None:
        bits.append(f" · ETA {N.fmt_seconds(p['eta_s'])}")
    bits += svd_progress_bits(p)
    groups = p.get("groups")
    if groups:  # fanned out over the workers (README, "Many workers")
        bits.append(f" · groups: {groups['done']} of {groups['total']} done, {groups['running']} running")
    if p.get("current"):
        bits += [" · ", html.Code(p["current"])]
    return bits


def svd_progress_bits(p: dict) -> list:
    """The SVD phase (rank, geometry): its estimate from the shapes until it has its own ETA."""
    total = p.get("svd_matrices_total")
    if not total:
        return []
    done = p.get("svd_matrices_done") or 0
    if p.get("svd_eta_s") is not None and done < total:
        return [f" · SVDs {done} / {total} matrices, ETA {N.fmt_seconds(p['svd_eta_s'])}"]
    if done >= total:
        return [f" · SVDs of all {total} matrices done"]
    est = p.get("svd_estimate_s")
    if est is not None:
        return [f" · rank of {total} matrices: about {N.fmt_seconds(est)} on this worker"]
    return [f" · SVDs {done} / {total} matrices"]


def progress_fraction(analysis: dict) -> float:
    p = analysis.get("progress") or {}
    if p.get("bytes_total"):
        return min(1.0, (p.get("bytes_done") or 0) / p["bytes_total"])
    if p.get("tensors_total"):
        return min(1.0, (p.get("tensors_done") or 0) / p["tensors_total"])
    return 0.0
