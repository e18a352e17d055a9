"""Figures of the overlap page (overlap schema 1, docs/CONTRACTS.md): pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping

import plotly.graph_objects as go

from .. import numbers as N
from . import venn as V
from .theme import ACCENT, HEATMAP_SCALE, MUTED, SET_COLORS, empty, layout


def venn(overlap: Mapping) -> go.Figure:
    """Area-proportional Venn of the changed sets, every region labelled with its exact count."""
    labels = list(overlap.get("labels") or ["A", "B"])
    regions = overlap.get("venn") or {}
    three = len(labels) >= 3
    if three:
        sizes = (overlap.get("a_changed", 0), overlap.get("b_changed", 0), overlap.get("c_changed", 0))
        pairs_block = overlap.get("pairs") or {}
        pairs = tuple(pairs_block.get(k, {}).get("both", 0) for k in ("ab", "ac", "bc"))
        if not all(pairs_block.get(k) for k in ("ab", "ac", "bc")):
            pairs = (regions.get("110", 0) + regions.get("111", 0),
                     regions.get("101", 0) + regions.get("111", 0),
                     regions.get("011", 0) + regions.get("111", 0))
        if max(sizes) <= 0:
            return empty("No changed elements in any of the analyses.")
        circles = V.layout3(sizes, pairs)
    else:
        sizes = (overlap.get("a_changed", 0), overlap.get("b_changed", 0))
        if max(sizes) <= 0:
            return empty("No changed elements in either analysis.")
        circles = V.layout2(sizes[0], sizes[1], overlap.get("both", 0))
        if not regions:
            regions = {"10": sizes[0] - overlap.get("both", 0),
                       "01": sizes[1] - overlap.get("both", 0), "11": overlap.get("both", 0)}
    fig = go.Figure()
    letters = "ABC"[: len(circles)]
    for (x, y, r), color, lab, size, letter in zip(circles, SET_COLORS, labels, sizes, letters):
        fig.add_shape(type="circle", x0=x - r, x1=x + r, y0=y - r, y1=y + r,
                      line=dict(color=color, width=2), fillcolor=color, opacity=0.22)
        # legend entries stand in for labels that would collide with region counts
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"<b>{letter}</b> {lab}: "
                                 f"{N.fmt_int(size)} changed",
                                 marker=dict(size=12, color=color, symbol="circle")))
    points = V.region_label_points(circles)
    cx = sum(c[0] for c in circles) / len(circles)
    cy = sum(c[1] for c in circles) / len(circles)
    rmax = max(c[2] for c in circles)
    n = max(overlap.get("numel") or 0, 1)
    missing = []
    for key, count in sorted(regions.items()):
        p = points.get(key)
        text = N.fmt_int(count)
        names = " & ".join(l for l, bit in zip(letters, key) if bit == "1")
        if p is None:
            if count:
                missing.append(f"{'only ' if key.count('1') == 1 else ''}{names}: {text}")
            continue
        x, y, clearance = p
        tiny = clearance < 0.09 * rmax
        dx, dy = x - cx, y - cy
        norm = math.hypot(dx, dy) or 1.0
        fig.add_annotation(
            x=x, y=y, text=f"<b>{text}</b>", showarrow=tiny, arrowhead=0, arrowcolor="#64748b",
            ax=70 * dx / norm if tiny else 0, ay=-70 * dy / norm if tiny else 0,
            font=dict(size=13, color="#0f172a"), bgcolor="rgba(255,255,255,0.75)" if tiny else None,
            hovertext=f"{'only ' if key.count('1') == 1 else ''}{names}: "
                      f"{100 * count / n:.4f} % of compared elements")
    if missing:
        fig.add_annotation(x=0, y=0, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                           text="Too small to draw: " + "; ".join(missing), showarrow=False,
                           font=dict(size=11, color="#64748b"))
    xs = [c[0] - c[2] for c in circles] + [c[0] + c[2] for c in circles]
    ys = [c[1] - c[2] for c in circles] + [c[1] + c[2] for c in circles]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    fig.update_xaxes(visible=False, range=[min(xs) - 0.15 * span, max(xs) + 0.15 * span])
    fig.update_yaxes(visible=False, range=[min(ys) - 0.05 * span, max(ys) + 0.3 * span],
                     scaleanchor="x", scaleratio=1)
    return layout(fig, height=560, legend=dict(orientation="h", y=-0.02, yanchor="top", x=0),
                   showlegend=True)


def overlap_bars(overlap: Mapping) -> go.Figure:
    """o1, o2, Jaccard beside what two random subsets of the same sizes would give."""
    names = ["o1 = |A∩B|/|A|", "o2 = |A∩B|/|B|", "Jaccard"]
    ours = [overlap.get("o1"), overlap.get("o2"), overlap.get("jaccard")]
    ra, rb = overlap.get("random_o1"), overlap.get("random_o2")
    rand_j = None
    if ra is not None and rb is not None and (ra + rb - ra * rb) > 0:
        # independent random sets of densities p=|B|/n, q=|A|/n: E|A∩B|/E|A∪B| = pq/(p+q-pq)
        rand_j = ra * rb / (ra + rb - ra * rb)
    rand = [ra, rb, rand_j]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[None if v is None else 100 * v for v in ours], name="measured",
                         marker_color=ACCENT, texttemplate="%{y:.1f} %", textposition="outside"))
    fig.add_trace(go.Bar(x=names, y=[None if v is None else 100 * v for v in rand],
                         name="random baseline", marker_color=MUTED,
                         texttemplate="%{y:.1f} %", textposition="outside"))
    fig.update_yaxes(title_text="%", range=[0, 110])
    return layout(fig, height=320, barmode="group", legend=dict(orientation="h", y=1.12))


def overlap_layer_heatmap(overlap: Mapping) -> go.Figure:
    layers = [l for l in overlap.get("layers") or [] if l.get("layer") is not None]
    if not layers:
        return empty("No per-layer overlap.")
    layers.sort(key=lambda l: (l.get("stack") or "", l["layer"]))
    names = N.layer_names([(l.get("stack"), l["layer"]) for l in layers])
    rows = [("o1", "o1"), ("o2", "o2"), ("jaccard", "Jaccard"),
            ("random_o1", "random o1"), ("random_o2", "random o2")]
    z = [[None if l.get(k) is None else 100 * l[k] for l in layers] for k, _ in rows]
    text = [[f"A {N.fmt_int(l.get('a_changed'))} · B {N.fmt_int(l.get('b_changed'))} · both "
             f"{N.fmt_int(l.get('both'))}" for l in layers] for _ in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=[name for _, name in rows], text=text,
        colorscale=HEATMAP_SCALE, zmin=0, zmax=100, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="%", side="right"), thickness=12),
        hovertemplate="layer %{x} · %{y}: %{z:.2f} %<br>%{text}<extra></extra>",
    ))
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(autorange="reversed")
    return layout(fig, height=300)
