"""The plain summary: one short paragraph of measured numbers, each beside its comparison point.

Shown on the analysis page, in the single-file report and by the CLI; a pure function of the
result (schema 1, docs/CONTRACTS.md), so all three say the same words. It never names a label
the numbers do not carry (no "RL-like", no "LoRA-like"): a number, then what to compare it with.
Sections added to the result later (precision, float64 rank, patch share) are read defensively:
a missing or null field drops its sentence, never the paragraph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from . import numbers as N

# The study's ranges of update sparsity at t = 1e-5 (Mukherjee et al. 2025; docs/METRICS.md).
STUDY_T = 1e-5
STUDY_RANGES = (("RL", 0.685, 0.96), ("SFT", 0.06, 0.15))


def as_number(x) -> float | None:
    """x when it is a finite number, else None (fields added later may be missing or malformed)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _against_ranges(s: float) -> str:
    """Where a sparsity at 1e-5 sits against the study's RL and SFT ranges, in numbers only."""
    parts = []
    for name, lo, hi in STUDY_RANGES:
        where = "inside" if lo <= s <= hi else ("above" if s > hi else "below")
        parts.append(f"{where} the study's {name} range ({100 * lo:g}–{100 * hi:g} %)")
    return " and ".join(parts)


def sparsity_sentence(result: Mapping) -> str | None:
    summary = result.get("summary") or {}
    t = as_number((result.get("options") or {}).get("tolerance"))
    t = N.DEFAULT_TOLERANCE if t is None else t
    s, exact = N.result_sparsity(result, t)
    if math.isnan(s):
        return None
    approx = "" if exact else "about "
    text = (f"At t = {N.fmt_tol(t)}, {approx}{N.fmt_pct(s)} of the {N.fmt_int(summary.get('numel'))} compared "
            f"elements are unchanged (update sparsity)")
    s5, _ = N.result_sparsity(result, STUDY_T)
    if not math.isnan(s5):
        lead = "; that is " if t == STUDY_T else f"; at the study's t = 1e-5 it is {N.fmt_pct(s5)}, "
        text += lead + _against_ranges(s5)
    ref = (result.get("reference") or {}).get("sparsity") or {}
    ref_val = as_number(ref.get(N.tol_key(STUDY_T)))
    if ref_val is not None and not math.isnan(s5):
        text += f"; the study reports {ref_val:.2f} % for this pair at 1e-5"
    return text + "."


def bit_exact_sentence(result: Mapping) -> str | None:
    summary = result.get("summary") or {}
    t = as_number((result.get("options") or {}).get("tolerance")) or N.DEFAULT_TOLERANCE
    changed = summary.get("changed") or {}
    c0, ct = as_number(changed.get("0.0")), as_number(N.changed_at(summary, t, result.get("curve_tolerances"))[0])
    numel = as_number(summary.get("numel"))
    if c0 is None or not numel:
        return None
    text = f"Bit for bit (t = 0) {N.fmt_pct(1 - c0 / numel)} are unchanged"
    if ct is not None and t > 0:
        moved = max(c0 - ct, 0.0)
        text += (f", so {N.fmt_int(moved)} elements ({N.fmt_pct(moved / c0 if c0 else 0.0)} of those that differ) "
                 f"moved by at most {N.fmt_tol(t)} and count as unchanged at t")
    return text + "."


def _density(record: Mapping, t: float, curve) -> float | None:
    s, _ = N.sparsity_at(record, t, curve)
    return None if math.isnan(s) else 1.0 - s


def module_sentence(result: Mapping) -> str | None:
    t = as_number((result.get("options") or {}).get("tolerance")) or N.DEFAULT_TOLERANCE
    curve = result.get("curve_tolerances")
    rows = [(m.get("module"), _density(m, t, curve)) for m in result.get("modules") or [] if m.get("numel")]
    rows = [(name, d) for name, d in rows if name and d is not None]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: r[1])
    (lo_name, lo), (hi_name, hi) = rows[0], rows[-1]
    whole = _density(result.get("summary") or {}, t, curve)
    avg = f" against {N.fmt_pct(whole)} over the whole model" if whole is not None else ""
    return (f"The most changed module type is {hi_name} ({N.fmt_pct(hi)} of its elements changed at t), the "
            f"least {lo_name} ({N.fmt_pct(lo)}){avg}.")


def rank_sentence(result: Mapping) -> str | None:
    rank = (result.get("summary") or {}).get("rank") or {}
    mean = as_number(rank.get("mean"))
    if mean is None:
        return None
    text = (f"Update rank averages {N.fmt_pct(mean, 1)} of full (the study's float32 rule, over "
            f"{N.fmt_int(rank.get('matrices'))} matrices; full rank is 100 %)")
    # the float64 numerical rank, when the engine reports it (docs/METRICS.md, "Update rank")
    f64 = rank.get("f64")
    f64_mean = as_number(f64.get("mean")) if isinstance(f64, Mapping) else None
    if f64_mean is not None:
        text += f"; {N.fmt_pct(f64_mean, 1)} by the float64 numerical rank"
    return text + "."


def geometry_sentence(result: Mapping) -> str | None:
    g = (result.get("summary") or {}).get("geometry") or {}
    qs = g.get("q") or []
    if not g.get("matrices") or not qs:
        return None
    i = min(range(len(qs)), key=lambda j: abs(qs[j] - 0.05))
    try:
        e = as_number(g["energy"]["two_sided"][i])
        b = as_number(g["baseline"]["two_sided"][i])
    except (KeyError, IndexError, TypeError):
        return None
    if e is None or b is None:
        return None
    times = f", {e / b:.1f} times that" if b > 0 else ""
    return (f"At k = {100 * qs[i]:.0f} % of the dimensions, {N.fmt_pct(e, 3)} of the update's energy lies in the "
            f"base's top singular subspaces on both sides, against {N.fmt_pct(b, 3)} for a direction-free "
            f"update{times}.")


def precision_sentence(result: Mapping) -> str | None:
    """The bf16-storage counterfactual (docs/METRICS.md, "Precision and magnitude"), when reported:
    summary.precision.counterfactual.bfloat16 = {numel, tensors, stored: {t: n}, rounded: {t: n}}."""
    p = (result.get("summary") or {}).get("precision")
    cf = p.get("counterfactual") if isinstance(p, Mapping) else None
    bf16 = cf.get("bfloat16") if isinstance(cf, Mapping) else None
    if not isinstance(bf16, Mapping):
        return None
    t = as_number((result.get("options") or {}).get("tolerance")) or N.DEFAULT_TOLERANCE
    stored, rounded = bf16.get("stored"), bf16.get("rounded")
    a = as_number(stored.get(N.tol_key(t))) if isinstance(stored, Mapping) else None
    b = as_number(rounded.get(N.tol_key(t))) if isinstance(rounded, Mapping) else None
    if not a or b is None:
        return None
    return (f"Stored in bf16, {N.fmt_pct(max(a - b, 0.0) / a)} of the {N.fmt_int(a)} elements changed at "
            f"t = {N.fmt_tol(t)} in the tensors stored wider would read as unchanged ({N.fmt_int(b)} changed after "
            "rounding both sides to bf16).")


def patch_sentence(result: Mapping) -> str | None:
    """The lossless patch's estimated size against the finetuned checkpoint's bytes, when reported."""
    patch = result.get("patch")
    if not isinstance(patch, Mapping):
        return None
    size, share = as_number(patch.get("bytes")), as_number(patch.get("share"))
    if size is None or share is None:
        return None
    return (f"A lossless patch from base to finetune would take about {N.fmt_bytes(size)}, {N.fmt_pct(share)} of "
            f"the finetuned checkpoint's {N.fmt_bytes(as_number(patch.get('tuned_bytes')))}.")


def plain_summary(result: Mapping) -> str:
    """One paragraph; every sentence a measured number beside its comparison point."""
    parts = [f(result) for f in (sparsity_sentence, bit_exact_sentence, module_sentence, rank_sentence,
                                 geometry_sentence, precision_sentence, patch_sentence)]
    return " ".join(p for p in parts if p)


def overlap_summary(overlap: Mapping) -> str:
    """The overlap's paragraph: o1, o2 and Jaccard beside their random baselines."""
    labels = list(overlap.get("labels") or ["A", "B"])
    a, b = (labels + ["A", "B"])[:2]
    o1, o2 = as_number(overlap.get("o1")), as_number(overlap.get("o2"))
    r1, r2 = as_number(overlap.get("random_o1")), as_number(overlap.get("random_o2"))
    parts = [f"At t = {N.fmt_tol(float(overlap.get('tolerance') or 0.0))}, {N.fmt_int(overlap.get('a_changed'))} "
             f"elements changed in {a} and {N.fmt_int(overlap.get('b_changed'))} in {b}, "
             f"{N.fmt_int(overlap.get('both'))} in both."]
    if o1 is not None:
        parts.append(f"{N.fmt_pct(o1)} of {a}'s changed elements also changed in {b} (o1), against "
                     f"{N.fmt_pct(r1)} if they were placed at random" + (f" ({o1 / r1:.1f} times)." if r1 else "."))
    if o2 is not None:
        parts.append(f"{N.fmt_pct(o2)} of {b}'s also changed in {a} (o2; random {N.fmt_pct(r2)}).")
    if as_number(overlap.get("jaccard")) is not None:
        parts.append(f"Jaccard {N.fmt_pct(overlap['jaccard'])}.")
    return " ".join(parts)


def top_tensors(result: Mapping, t: float, n: int = 10) -> list[dict]:
    """The n tensors with the largest changed share at t (ties: more elements first)."""
    rows = N.tensor_rows(result.get("tensors") or [], t, result.get("curve_tolerances"))
    rows = [r for r in rows if r["numel"] and r["sparsity"] is not None]
    rows.sort(key=lambda r: (r["sparsity"], -r["numel"], r["name"] or ""))
    return rows[:n]


def module_rows(result: Mapping, t: float) -> list[tuple]:
    """(module, elements, changed, sparsity) per module type at t, the most changed first."""
    rows = []
    for m in result.get("modules") or []:
        changed, _ = N.changed_at(m, t, result.get("curve_tolerances"))
        s, _ = N.sparsity_at(m, t, result.get("curve_tolerances"))
        rows.append((m.get("module"), m.get("numel") or 0, changed, s))
    rows.sort(key=lambda r: (r[3] if not math.isnan(r[3]) else 2.0, r[0] or ""))
    return [(name, N.fmt_int(n), N.fmt_int(c), N.fmt_pct(s)) for name, n, c, s in rows]
