"""Figures of the compare page (several results side by side, like the study's Table 1): pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from .. import numbers as N
from .theme import ACCENT, REFERENCE, empty, layout


def compare_bars(items: Sequence[tuple[str, Mapping]], t: float) -> go.Figure:
    """Sparsity at t of several analyses (the study's Table 1 / Figure 1 view),
    with the study's reported value beside ours where it has one."""
    items = [(label, r) for label, r in items if r]
    if not items:
        return empty("Pick finished analyses to compare.")
    labels = [label for label, _ in items]
    ours, ref, approx = [], [], []
    for _, r in items:
        s, exact = N.result_sparsity(r, t)
        ours.append(100 * s)
        approx.append("" if exact else "≈ ")
        reported = ((r.get("reference") or {}).get("sparsity") or {}).get(N.tol_key(t))
        ref.append(reported)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=ours, name="measured", marker_color=ACCENT,
                         text=[f"{a}{v:.2f} %" for a, v in zip(approx, ours)],
                         textposition="outside", cliponaxis=False,
                         hovertemplate="%{x}<br>%{text}<extra>measured</extra>"))
    if any(v is not None for v in ref):
        fig.add_trace(go.Bar(x=labels, y=ref, name="reported in the study", marker_color=REFERENCE,
                             texttemplate="%{y:.2f} %", textposition="outside", cliponaxis=False))
    fig.update_yaxes(title_text=f"update sparsity at t = {N.fmt_tol(t)} (%)", range=[0, 108])
    fig.update_xaxes(tickangle=0 if len(labels) <= 3 else -20, automargin=True)
    return layout(fig, height=400, barmode="group", legend=dict(orientation="h", y=1.1))
