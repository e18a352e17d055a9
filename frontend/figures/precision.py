"""Figures of the precision view (docs/METRICS.md, "Precision and magnitude"): pure functions of
the result's `summary.precision` block (docs/CONTRACTS.md), read defensively: a missing or
malformed block gives an `empty` figure that says so."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from .. import numbers as N
from .theme import ACCENT, MUTED, empty, layout


def precision_block(result: Mapping) -> Mapping | None:
    p = (result.get("summary") or {}).get("precision")
    return p if isinstance(p, Mapping) and isinstance(p.get("compared"), list) and p.get("compared") else None


def changed_by_magnitude(result: Mapping, t: float) -> go.Figure:
    """Share of elements changed at t per magnitude bin of |w_base| (binary exponent), with the
    share that moved at most one representable step where reported."""
    p = precision_block(result)
    if p is None:
        return empty("The precision view was not reported for this analysis.")
    compared = p["compared"]
    labels = p.get("labels") or [str(b) for b in p.get("bins") or range(len(compared))]
    changed = (p.get("changed") or {}).get(N.tol_key(t))
    if not isinstance(changed, list) or len(changed) != len(compared):
        return empty(f"No exact counts at t = {N.fmt_tol(t)} in the precision view.")
    share = [100 * c / n if n else None for c, n in zip(changed, compared)]
    fig = go.Figure(go.Bar(x=labels, y=share, name=f"changed at t = {N.fmt_tol(t)}", marker_color=ACCENT,
                           customdata=list(zip(changed, compared)),
                           hovertemplate="|w| in %{x}: %{customdata[0]:,} of %{customdata[1]:,} changed "
                                         "(%{y:.2f} %)<extra></extra>"))
    one = p.get("one_step_share")
    if isinstance(one, list) and len(one) == len(compared):
        fig.add_trace(go.Scatter(x=labels, y=[None if v is None else 100 * v for v in one], mode="lines+markers",
                                 name="of the moved: at most one step", line=dict(color=MUTED, dash="dot")))
    fig.update_xaxes(title_text="magnitude of the base weight |w| (binary exponent bin)")
    fig.update_yaxes(title_text="% of the bin's elements", rangemode="tozero")
    return layout(fig, title="Changed share by base magnitude", legend=dict(orientation="h", y=1.12))
