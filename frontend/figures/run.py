"""Figures of a training run (GET /api/runs/{id}; dynamics schema in docs/CONTRACTS.md): pure functions.

Like the other figure modules: plain dicts in, a plotly Figure out, no Dash, Redis or HTTP. Every
point carries the id of the analysis it comes from in `customdata`, so the page can open it
(/a/<id>) on a click.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from .. import numbers as N
from .theme import ACCENT, HEATMAP_SCALE, MUTED, REFERENCE, empty, layout

HEATMAP_METRICS = {
    "sparsity": "sparsity vs base",
    "consecutive": "consecutive-update sparsity",
    "ever": "ever-changed density",
    "outside": "ever-changed outside the current set",
}
GREEN = "#059669"
PURPLE = "#7c3aed"


def steps_axis(checkpoints: Sequence[Mapping]) -> tuple[list, str]:
    """x values (steps, or names when a checkpoint has no step number) and the axis title."""
    if checkpoints and all(c.get("step") is not None for c in checkpoints):
        return [c["step"] for c in checkpoints], "training step"
    return [c.get("name") for c in checkpoints], "checkpoint"


def _pct(v):
    return None if v is None else 100 * v


def _line(fig, x, y, name, color, custom, names, *, dash=None, hover=""):
    fig.add_trace(go.Scatter(
        x=x, y=y, name=name, mode="lines+markers", customdata=custom, text=names,
        line=dict(color=color, width=2, dash=dash), marker=dict(size=8),
        hovertemplate=f"%{{text}} (step %{{x}})<br>{name}: %{{y:.4f}} %{hover}<extra></extra>"))


def sparsity_vs_step(result: Mapping, t: float) -> go.Figure:
    """Sparsity of each checkpoint against the base at tolerance t (one of the exact tolerances)."""
    cps = result.get("checkpoints") or []
    if not cps:
        return empty("No checkpoints in this run.")
    key = N.tol_key(t)
    x, title = steps_axis(cps)
    fig = go.Figure()
    _line(fig, x, [_pct((c.get("sparsity") or {}).get(key)) for c in cps], f"sparsity at t = {N.fmt_tol(t)}",
          ACCENT, [c.get("analysis") for c in cps], [c.get("name") for c in cps],
          hover="<br>click: open the analysis")
    fig.update_xaxes(title_text=title)
    fig.update_yaxes(title_text="sparsity vs base (%)")
    return layout(fig, height=320, showlegend=False)


def consecutive_vs_step(result: Mapping, t: float) -> go.Figure:
    """Sparsity of each update from the previous checkpoint (the first: from the base)."""
    cps = result.get("checkpoints") or []
    if not cps:
        return empty("No checkpoints in this run.")
    key = N.tol_key(t)
    x, title = steps_axis(cps)
    fig = go.Figure()
    _line(fig, x, [_pct(((c.get("consecutive") or {}).get("sparsity") or {}).get(key)) for c in cps],
          f"consecutive sparsity at t = {N.fmt_tol(t)}", REFERENCE,
          [c.get("consecutive_analysis") for c in cps], [c.get("name") for c in cps],
          hover="<br>click: open the analysis of this update")
    fig.update_xaxes(title_text=title)
    fig.update_yaxes(title_text="update sparsity (%)")
    return layout(fig, height=320, showlegend=False)


def ever_vs_final(result: Mapping) -> go.Figure:
    """At the run tolerance: density of the ever-changed set E_i and of I_i, the share of E_i outside
    I_i, and the overlap of I_i with the final set (o1, o2) beside the random baseline."""
    cps = result.get("checkpoints") or []
    if not cps:
        return empty("No checkpoints in this run.")
    x, title = steps_axis(cps)
    ids, names = [c.get("analysis") for c in cps], [c.get("name") for c in cps]
    fig = go.Figure()
    series = (
        ("ever_density", "ever-changed |E_i| / n", ACCENT, None),
        ("subnet_density", "changed now |I_i| / n", MUTED, None),
        ("outside_share", "E_i outside I_i: |E_i \\ I_i| / |E_i|", REFERENCE, None),
        ("o1", "o1 with final: |I_i ∩ I_k| / |I_i|", GREEN, None),
        ("o2", "o2 with final: |I_i ∩ I_k| / |I_k|", PURPLE, None),
        ("random_o1", "random o1: |I_k| / n", GREEN, "dot"),
    )
    for field, label, color, dash in series:
        _line(fig, x, [_pct(c.get(field)) for c in cps], label, color, ids, names, dash=dash)
    fig.update_xaxes(title_text=title)
    fig.update_yaxes(title_text=f"% at t = {N.fmt_tol(result.get('tolerance', 1e-5))}", rangemode="tozero")
    return layout(fig, height=380, legend=dict(orientation="h", y=-0.25))


def layer_step_heatmap(result: Mapping, t: float, metric: str = "sparsity") -> go.Figure:
    """Layers (rows, one block of rows per stack) x checkpoints (columns)."""
    cps = result.get("checkpoints") or []
    rows = [r for r in result.get("layers") or [] if r.get("layer") is not None]
    if not cps or not rows:
        return empty("No per-layer numbers in this run.")
    key = N.tol_key(t)
    x, title = steps_axis(cps)
    ids = [c.get("consecutive_analysis") if metric == "consecutive" else c.get("analysis") for c in cps]

    def value(step: Mapping):
        if metric == "consecutive":
            return _pct((step.get("consecutive_sparsity") or {}).get(key))
        if metric == "ever":
            return _pct(step.get("ever_density"))
        if metric == "outside":
            return _pct(step.get("outside_share"))
        return _pct((step.get("sparsity") or {}).get(key))

    names = N.layer_names([(r.get("stack"), r["layer"]) for r in rows])
    z = [[value(s) for s in r["steps"]] for r in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(v) for v in x], y=names, customdata=[ids for _ in rows], colorscale=HEATMAP_SCALE,
        xgap=1, ygap=1, hoverongaps=False,
        colorbar=dict(title=dict(text="%", side="right"), thickness=12),
        hovertemplate="layer %{y} · %{x}: %{z:.3f} %<br>click: open the analysis<extra></extra>"))
    fig.update_xaxes(title_text=title, type="category")
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed", dtick=max(1, len(rows) // 24))
    return layout(fig, height=max(260, 18 * len(rows) + 120))


def partial_sparsity(view: Mapping) -> go.Figure:
    """While the run is computing: sparsity vs base of the checkpoints finished so far, at the run tolerance."""
    cps = view.get("checkpoints") or []
    tol = float((view.get("request") or {}).get("tolerance") or N.DEFAULT_TOLERANCE)
    done = [c for c in cps if (c.get("analysis") or {}).get("status") == "done"]
    if not done:
        return empty("No checkpoint finished yet.")
    x, title = steps_axis(cps)
    index = {c.get("name"): v for c, v in zip(cps, x)}
    fig = go.Figure()
    _line(fig, [index[c["name"]] for c in done],
          [_pct(c["analysis"].get("sparsity")) for c in done],
          f"sparsity at t = {N.fmt_tol(tol)}", ACCENT, [c["analysis"]["id"] for c in done], [c["name"] for c in done])
    fig.update_xaxes(title_text=title)
    if title != "checkpoint":  # the whole run's span, so points fill in without the axis jumping
        pad = (max(x) - min(x)) * 0.05 or 1
        fig.update_xaxes(range=[min(x) - pad, max(x) + pad])
    fig.update_yaxes(title_text="sparsity vs base (%)")
    return layout(fig, title=f"Sparsity vs base so far: {len(done)} of {len(cps)} checkpoints", height=300,
                   showlegend=False)
