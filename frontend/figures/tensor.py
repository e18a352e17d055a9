"""Figures of the tensor drill-down page (one tensor's mask density, coverage, ULP and spectra): pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import numbers as N
from .theme import ACCENT, HEATMAP_SCALE, MUTED, REFERENCE, empty, layout


def mask_density(density: Mapping, scale: str = "linear") -> go.Figure:
    """Where a tensor's changed elements lie: share changed per (row bin, column bin)."""
    grid = density.get("density") or []
    if not grid:
        return empty("No mask for this tensor.")
    rows, cols = density["row_edges"], density["col_edges"]
    z = [[None if v is None else (math.log10(v) if v > 0 else None) if scale == "log" else 100 * v for v in r]
         for r in grid]
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{a}–{b - 1}" for a, b in zip(cols[:-1], cols[1:])],
        y=[f"{a}–{b - 1}" for a, b in zip(rows[:-1], rows[1:])],
        colorscale=HEATMAP_SCALE, zmin=None if scale == "log" else 0, zmax=None if scale == "log" else 100,
        colorbar=dict(title=dict(text="log10 share" if scale == "log" else "changed %", side="right"),
                      thickness=12),
        hovertemplate="rows %{y} · columns %{x}<br>" + ("log10 share %{z:.2f}" if scale == "log"
                                                        else "%{z:.2f} % changed") + "<extra></extra>"))
    shape = density.get("shape") or ["?", "?"]
    fig.update_xaxes(title_text=f"columns ({N.fmt_int(shape[-1])}, {len(cols) - 1} bins)", showticklabels=False)
    fig.update_yaxes(title_text=f"rows ({N.fmt_int(shape[0])}, {len(rows) - 1} bins)", autorange="reversed",
                     showticklabels=False)
    return layout(fig, height=520, title=f"Changed elements at t = {N.fmt_tol(density.get('tolerance') or 0)}")


def coverage_histograms(density: Mapping) -> go.Figure:
    """How many rows (columns) have what share of their elements changed."""
    if not density.get("row_hist"):
        return empty("No coverage histogram.")
    edges = density["hist_edges"]
    labels = ["0 (untouched)"] + [f"{100 * a:g}–{100 * b:g} %" for a, b in zip(edges[:-1], edges[1:])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"rows: {N.fmt_pct(density['row_coverage'])} touched", f"columns: {N.fmt_pct(density['col_coverage'])} touched"))
    for col, key, color in ((1, "row_hist", ACCENT), (2, "col_hist", REFERENCE)):
        fig.add_trace(go.Bar(x=labels, y=density[key], marker_color=color, showlegend=False,
                             hovertemplate="%{x} changed: %{y:,}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(type="category", tickangle=-40, title_text="share of the line changed", row=1, col=col)
    fig.update_yaxes(title_text="rows / columns", type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    return layout(fig, height=340)


def tensor_ulp(record: Mapping, buckets: Sequence[str]) -> go.Figure:
    counts = list(record.get("ulp") or [])
    if not any(counts):
        return empty("No changed elements in this tensor, so no ULP distances.")
    last = max(i for i, c in enumerate(counts) if c)
    xs, ys = list(buckets)[: last + 2], counts[: last + 2]
    total = sum(ys)
    fig = go.Figure(go.Bar(x=xs, y=ys, marker_color=ACCENT, customdata=[100 * c / total for c in ys],
                           hovertemplate="%{x} step(s)<br>%{y:,} elements (%{customdata:.2f} %)<extra></extra>"))
    fig.update_xaxes(title_text="representable steps between base and tuned value", type="category")
    fig.update_yaxes(title_text="elements", type="log" if max(ys) > 100 * max(min(c for c in ys if c), 1) else "linear")
    return layout(fig, height=300, title=f"ULP distance · {100 * counts[0] / total:.1f} % moved one step")


def singular_spectra(record: Mapping, scale: str = "log") -> go.Figure:
    """Singular values of W and W̃ by index (as stored: all, or the top ones plus a subsample)."""
    g = record.get("geometry") or {}
    sp = g.get("spectra")
    if not sp:
        return empty("Singular values not computed for this tensor: submit with geometry "
                     "'sampled' or 'all' (sampled takes the first, middle and last layer of each stack).")
    xs = [i + 1 for i in sp["index"]] if sp.get("index") else list(range(1, len(sp["base"]) + 1))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=sp["base"], mode="lines", name="σ(W) base", line=dict(color=MUTED, width=3)))
    fig.add_trace(go.Scatter(x=xs, y=sp["tuned"], mode="lines", name="σ(W̃) tuned",
                             line=dict(color=ACCENT, width=1.5, dash="dot")))
    fig.update_xaxes(title_text="index i" + ("" if not sp.get("index") else
                                             f" (top 256 and a subsample of {sp['rank']})"),
                     type="log" if scale == "log" else "linear")
    fig.update_yaxes(title_text="σ_i", type="log" if scale == "log" else "linear")
    return layout(fig, height=340, title=f"Singular values · drift {g.get('drift', 0):.3g}",
                   legend=dict(orientation="h", y=1.12))
