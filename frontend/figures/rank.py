"""Figures of the Rank tab: both update ranks of every matrix (metrics.md "Update rank"), pure functions.

The study's figure (float32 `torch.linalg.matrix_rank`) is drawn as the study's: filled
markers, its mean as the dashed line; the float64 numerical rank beside it in open markers
of the same module colour, its mean dotted. Where the two differ, the float32 rule cut
singular values that float64 resolves (a long singular tail), not a low-rank update.
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from .. import numbers as N
from .analysis import _module_order
from .theme import ACCENT, MUTED, empty, layout

PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#65a30d", "#475569"]
KINDS = (("rank_ratio", "rank", "study (float32)", dict(symbol="circle", size=8)),
         ("rank_f64_ratio", "rank_f64", "float64", dict(symbol="diamond-open", size=10, line=dict(width=2))))


def rank_rows(result: Mapping) -> list[dict]:
    return [r for r in result.get("tensors") or [] if r.get("rank_ratio") is not None]


def rank_chart(result: Mapping) -> go.Figure:
    """rank(Δ)/min(m, n) of every matrix with a computed rank, by layer and module: both ranks."""
    rows = rank_rows(result)
    if not rows:
        mode = ((result.get("summary") or {}).get("rank") or {}).get("mode", "off")
        return empty(f"Update rank not computed (rank mode: {mode}). "
                     "Submit with rank 'sampled' or 'all' to see it.")
    modules = _module_order({r.get("module") for r in rows})
    keys = sorted({(r.get("stack"), r["layer"]) for r in rows if r.get("layer") is not None},
                  key=lambda k: (k[0] or "", k[1]))
    where = dict(zip(keys, N.layer_names(keys)))
    fig = go.Figure()
    for ratio, count, kind, marker in KINDS:
        for i, m in enumerate(modules):
            sel = [r for r in rows if (r.get("module") or "(other)") == m and r.get(ratio) is not None]
            if not sel:
                continue
            fig.add_trace(go.Scatter(
                x=[where.get((r.get("stack"), r.get("layer")), "outside") for r in sel],
                y=[100 * r[ratio] for r in sel], mode="markers", name=f"{m} · {kind}",
                legendgroup=m, meta=ratio,
                marker=dict(color=PALETTE[i % len(PALETTE)], opacity=0.85, **marker),
                text=[f"{r['name']}<br>{kind} rank {r.get(count)} of {min(r['shape']) if r.get('shape') else '?'}"
                      for r in sel],
                hovertemplate="%{text}<br>%{y:.2f} % of full rank<extra></extra>",
            ))
    rank = (result.get("summary") or {}).get("rank") or {}
    f64 = rank.get("f64") or {}
    if rank.get("mean") is not None:
        fig.add_hline(y=100 * rank["mean"], line=dict(color=MUTED, dash="dash"),
                      annotation_text=f"study's mean (float32) {100 * rank['mean']:.1f} %",
                      annotation_position="bottom right")
    if f64.get("mean") is not None:
        fig.add_hline(y=100 * f64["mean"], line=dict(color=ACCENT, dash="dot"),
                      annotation_text=f"float64 mean {100 * f64['mean']:.1f} %", annotation_position="top left")
    fig.update_xaxes(title_text="layer", type="category", categoryorder="array",
                     categoryarray=[*where.values(), "outside"])
    fig.update_yaxes(title_text="rank(Δ) / min(m, n)  (%)", range=[0, 105])
    return layout(fig, height=360, legend=dict(orientation="h", y=-0.25))


def rank_gap(result: Mapping) -> dict:
    """How many matrices the study's float32 rule reads below their float64 rank, and by how much at most."""
    rows = [r for r in rank_rows(result) if r.get("rank_f64") is not None]
    lower = [r for r in rows if r["rank"] < r["rank_f64"]]
    return {"matrices": len(rows), "lower": len(lower),
            "max_gap": max((r["rank_f64"] - r["rank"] for r in lower), default=0),
            "example": max(lower, key=lambda r: r["rank_f64"] - r["rank"])["name"] if lower else None}
