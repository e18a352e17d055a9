"""Plotly figures from result data (schema 1, overlap schema 1): pure functions.

No Dash, no Redis, no HTTP: each function takes plain dicts and returns a
`plotly.graph_objects.Figure`, so the pages stay thin and the figures can be
unit-tested against real engine output. Optional fields (rank, ulp, curve)
may be missing or null; a figure then says what is missing instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import numbers as N
from . import venn as V

# One sequential scale for every heatmap; dark = high value.
HEATMAP_SCALE = "Viridis"
ACCENT = "#2563eb"      # our measurements
REFERENCE = "#d97706"   # the study's reported values
MUTED = "#94a3b8"
SET_COLORS = ("#2563eb", "#d97706", "#059669")
FONT = "Inter, system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"


def _layout(fig: go.Figure, *, title: str | None = None, height: int = 360, **kw) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        font=dict(family=FONT, size=13, color="#1e293b"),
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=15)) if title else None,
        margin=dict(l=60, r=20, t=48 if title else 16, b=50),
        height=height,
        hoverlabel=dict(font=dict(family=FONT)),
        **kw,
    )
    return fig


def empty(message: str, height: int = 240) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#64748b"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=height)


def _metric_value(sparsity: float, metric: str) -> float:
    return sparsity if metric == "sparsity" else 1.0 - sparsity


def tolerance_curve(result: Mapping, view_t: float, metric: str = "sparsity") -> go.Figure:
    """Sparsity (or density) against tolerance, log x; the seven exact counts as
    markers, the analysis tolerance and the view tolerance as vertical lines."""
    summary = result.get("summary") or {}
    numel = summary.get("numel") or 0
    xs = result.get("curve_tolerances") or []
    ys = summary.get("curve_changed") or []
    if not numel or not xs or not ys:
        return empty("No tolerance curve in this result.")
    label = "Sparsity" if metric == "sparsity" else "Density"
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=list(xs), y=[100 * _metric_value(1 - c / numel, metric) for c in ys],
        mode="lines", name="curve", line=dict(color=ACCENT, width=2),
        hovertemplate="t = %{x:.3g}<br>" + label + " %{y:.4f} %<extra></extra>",
    ))
    ex_t, ex_y, ex_txt = [], [], []
    for t in result.get("tolerances") or N.EXACT_TOLERANCES:
        if t <= 0:
            continue
        c = (summary.get("changed") or {}).get(N.tol_key(t))
        if c is None:
            continue
        ex_t.append(t)
        ex_y.append(100 * _metric_value(1 - c / numel, metric))
        ex_txt.append(f"{N.fmt_int(c)} changed")
    fig.add_trace(go.Scatter(
        x=ex_t, y=ex_y, mode="markers", name="exact counts",
        marker=dict(color="white", size=9, line=dict(color=ACCENT, width=2)),
        text=ex_txt, hovertemplate="t = %{x:.0e} (exact)<br>" + label
        + " %{y:.4f} %<br>%{text}<extra></extra>",
    ))
    bit = (summary.get("changed") or {}).get("0.0")
    if bit is not None:
        y0 = 100 * _metric_value(1 - bit / numel, metric)
        fig.add_hline(y=y0, line=dict(color=MUTED, dash="dot", width=1),
                      annotation_text=f"bit-exact (t = 0): {y0:.2f} %",
                      annotation_position="bottom right", annotation_font_color="#64748b")
    chosen = (result.get("options") or {}).get("tolerance")
    if chosen:
        fig.add_vline(x=chosen, line=dict(color="#334155", dash="dash", width=1),
                      annotation_text=f"analysis t = {N.fmt_tol(chosen)}",
                      annotation_position="top left", annotation_font_color="#334155")
    if view_t and view_t > 0 and view_t != chosen:
        fig.add_vline(x=view_t, line=dict(color=REFERENCE, width=2),
                      annotation_text=f"view t = {N.fmt_tol(view_t)}",
                      annotation_position="top right", annotation_font_color=REFERENCE)
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    fig.update_xaxes(type="log", title_text="tolerance t  (changed iff |Δ| > t)",
                     exponentformat="power", showgrid=True, range=[lo - 0.05, hi + 0.05])
    fig.update_yaxes(title_text=f"{label} (%)")
    return _layout(fig, showlegend=False)


def layer_module_heatmap(tensors: Sequence[Mapping], curve_tolerances: Sequence[float] | None,
                         t: float, metric: str = "sparsity", *, title: str | None = None) -> go.Figure:
    """Layers (rows) x modules (columns), element-weighted sparsity or density at tolerance t,
    one block per stack (encoder and decoder, vision tower and language model never share
    rows), on one colour scale. Works on partial tensor lists: missing cells stay blank."""
    in_layers = [r for r in tensors if r.get("layer") is not None]
    if not in_layers:
        return empty("No per-layer tensors yet." if not tensors else
                     "No tensor names carry a layer index.")
    groups = N.aggregate(in_layers, t, curve_tolerances, by=("stack", "layer", "module"))
    names = cell_tensors(in_layers)
    stacks = sorted({k[0] for k in groups}, key=lambda s: s or "")
    labels = N.stack_labels(stacks)
    per_stack = {s: sorted({k[1] for k in groups if k[0] == s}) for s in stacks}
    label = "sparsity" if metric == "sparsity" else "density"
    # Sizes in pixels, so each block keeps readable rows and its own module labels fit
    # between it and the next block whatever the number of stacks.
    longest = max((len(str(k[2])) for k in groups), default=8)
    labels_px = int(min(230, 30 + 4.2 * longest))
    blocks_px = [max(70, 20 * len(per_stack[s])) for s in stacks]
    gap_px = labels_px + 36 if len(stacks) > 1 else 0
    plot_px = sum(blocks_px) + gap_px * (len(stacks) - 1)
    fig = make_subplots(rows=len(stacks), cols=1, vertical_spacing=gap_px / plot_px,
                        row_heights=blocks_px,
                        subplot_titles=[labels[s] for s in stacks] if len(stacks) > 1 else None)
    for row, stack in enumerate(stacks, start=1):
        layers = per_stack[stack]
        modules = _module_order({k[2] for k in groups if k[0] == stack})
        z, text, custom = [], [], []
        for layer in layers:
            zr, tr = [], []
            custom.append([names.get((stack, layer, m), "") for m in modules])
            for m in modules:
                g = groups.get((stack, layer, m))
                if g is None:
                    zr.append(None)
                    tr.append("")
                    continue
                v = _metric_value(g["sparsity"], metric)
                zr.append(100 * v)
                approx = "" if g["exact"] else "≈ "
                tr.append(f"{approx}{100 * v:.3f} %<br>{N.fmt_int(g['changed'])} of "
                          f"{N.fmt_int(g['numel'])} changed<br>{g['tensors']} tensor(s)")
            z.append(zr)
            text.append(tr)
        fig.add_trace(go.Heatmap(
            z=z, x=modules, y=[str(x) for x in layers], text=text, name=stack or "layers",
            customdata=custom, coloraxis="coloraxis", hoverongaps=False, xgap=1, ygap=1,
            hovertemplate=f"{labels[stack]} %{{y}} · %{{x}}<br>%{{text}}<extra></extra>",
        ), row=row, col=1)
        fig.update_yaxes(title_text="layer", autorange="reversed", type="category",
                         dtick=max(1, len(layers) // 20), row=row, col=1)
        fig.update_xaxes(type="category", tickangle=-40, row=row, col=1)
    fig.update_layout(coloraxis=dict(colorscale=HEATMAP_SCALE, colorbar=dict(
        title=dict(text=f"{label} %", side="right"), thickness=12)))
    top = 48 if title else 16
    fig = _layout(fig, title=title, height=plot_px + top + labels_px + 24 + (24 if len(stacks) > 1 else 0))
    fig.update_layout(margin=dict(t=top + (24 if len(stacks) > 1 else 0), b=labels_px + 24))
    return fig


def cell_tensors(tensors: Sequence[Mapping]) -> dict:
    """(stack, layer, module) -> the name of its largest tensor: where a click on a cell leads."""
    best: dict = {}
    for r in tensors:
        key = (r.get("stack"), r.get("layer"), r.get("module"))
        if key not in best or (r.get("numel") or 0) > best[key][0]:
            best[key] = (r.get("numel") or 0, r["name"])
    return {k: v[1] for k, v in best.items()}


# Usual order of a block's modules, by a path's last part; modules under one parent
# (self_attn.*, mlp.*) stay together, placed by their earliest member.
_MODULE_ORDER = ("input_layernorm", "ln_1", "layer_norm", "q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn",
                 "query", "key", "value", "q", "k", "v", "o_proj", "o", "dense", "post_attention_layernorm", "ln_2",
                 "gate", "gate_proj", "up_proj", "gate_up_proj", "c_fc", "w1", "w3", "wi", "down_proj", "c_proj",
                 "w2", "wo")


def _module_order(modules) -> list[str]:
    rank = {m: i for i, m in enumerate(_MODULE_ORDER)}
    present = [m for m in modules if m is not None]
    split = {m: m.rsplit(".", 1) if "." in m else ["", m] for m in present}
    leaf = {m: rank.get(split[m][1], len(rank)) for m in present}
    first: dict[str, int] = {}
    for m in present:
        parent = split[m][0]
        first[parent] = min(first.get(parent, leaf[m]), leaf[m])

    def key(m: str) -> tuple:
        parent = split[m][0]
        return (leaf[m] if not parent else first[parent], parent, leaf[m], m)

    return sorted(present, key=key) + (["(other)"] if None in modules else [])


def layer_bars(tensors: Sequence[Mapping], curve_tolerances: Sequence[float] | None,
               t: float, metric: str = "sparsity") -> go.Figure:
    """One bar per layer of each stack (plus tensors outside layers), element-weighted."""
    if not tensors:
        return empty("No tensors.")
    groups = N.aggregate(tensors, t, curve_tolerances, by=("stack", "layer"))
    keys = sorted((k for k in groups if k[1] is not None), key=lambda k: (k[0] or "", k[1]))
    names = N.layer_names(keys)
    if (None, None) in groups:
        keys.append((None, None))
        names.append("outside")
    ys = [100 * _metric_value(groups[k]["sparsity"], metric) for k in keys]
    hover = [f"{N.fmt_int(groups[k]['changed'])} of {N.fmt_int(groups[k]['numel'])} changed"
             + ("" if groups[k]["exact"] else " (≈)") for k in keys]
    label = "Sparsity" if metric == "sparsity" else "Density"
    fig = go.Figure(go.Bar(x=names, y=ys, marker_color=ACCENT, customdata=hover,
                           hovertemplate="layer %{x}<br>" + label
                           + " %{y:.3f} %<br>%{customdata}<extra></extra>"))
    lo = min((y for y in ys if not math.isnan(y)), default=0)
    fig.update_yaxes(title_text=f"{label} (%)",
                     range=[max(0, lo - (100 - lo) * 0.5 - 1), 100] if metric == "sparsity" else None)
    fig.update_xaxes(title_text="layer", type="category")
    return _layout(fig, height=300)


def ulp_histogram(result: Mapping) -> go.Figure:
    ulp = (result.get("summary") or {}).get("ulp") or {}
    buckets, counts = ulp.get("buckets") or [], ulp.get("counts") or []
    if not buckets or not any(counts):
        return empty("No changed elements, so no ULP distances.")
    last = max(i for i, c in enumerate(counts) if c)  # the long tail of empty buckets says nothing
    buckets, counts = list(buckets)[: last + 2], list(counts)[: last + 2]
    total = sum(counts)
    fig = go.Figure(go.Bar(
        x=list(buckets), y=list(counts), marker_color=ACCENT,
        customdata=[100 * c / total for c in counts],
        hovertemplate="%{x} step(s)<br>%{y:,} elements (%{customdata:.2f} %)<extra></extra>",
    ))
    share = ulp.get("one_step_share")
    title = "ULP distance of changed elements"
    if share is not None:
        title += f" · {100 * share:.1f} % moved exactly one representable step"
    fig.update_xaxes(title_text="representable steps between base and tuned value", type="category")
    log_scale = max(counts) > 100 * max(min(c for c in counts if c), 1)
    fig.update_yaxes(title_text="elements", type="log" if log_scale else "linear", dtick=1 if log_scale else None)
    return _layout(fig, title=title, height=320)


def rank_chart(result: Mapping) -> go.Figure:
    """rank(Δ)/min(m, n) of every 2-D tensor with a computed rank, by layer and module."""
    rows = [r for r in result.get("tensors") or [] if r.get("rank_ratio") is not None]
    if not rows:
        mode = ((result.get("summary") or {}).get("rank") or {}).get("mode", "off")
        return empty(f"Update rank not computed (rank mode: {mode}). "
                     "Submit with rank 'sampled' or 'all' to see it.")
    modules = _module_order({r.get("module") for r in rows})
    keys = sorted({(r.get("stack"), r["layer"]) for r in rows if r.get("layer") is not None},
                  key=lambda k: (k[0] or "", k[1]))
    where = dict(zip(keys, N.layer_names(keys)))
    fig = go.Figure()
    palette = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d",
               "#65a30d", "#475569"]
    for i, m in enumerate(modules):
        sel = [r for r in rows if (r.get("module") or "(other)") == m]
        fig.add_trace(go.Scatter(
            x=[where.get((r.get("stack"), r.get("layer")), "outside") for r in sel],
            y=[100 * r["rank_ratio"] for r in sel], mode="markers", name=m,
            marker=dict(size=8, color=palette[i % len(palette)], opacity=0.85),
            text=[f"{r['name']}<br>rank {r.get('rank')} of {min(r['shape']) if r.get('shape') else '?'}"
                  for r in sel],
            hovertemplate="%{text}<br>%{y:.1f} % of full rank<extra></extra>",
        ))
    rank = (result.get("summary") or {}).get("rank") or {}
    if rank.get("mean") is not None:
        fig.add_hline(y=100 * rank["mean"], line=dict(color=MUTED, dash="dash"),
                      annotation_text=f"mean {100 * rank['mean']:.1f} %",
                      annotation_position="bottom right")
    fig.update_xaxes(title_text="layer", type="category", categoryorder="array",
                     categoryarray=[*where.values(), "outside"])
    fig.update_yaxes(title_text="rank(Δ) / min(m, n)  (%)", range=[0, 105])
    return _layout(fig, height=340, legend=dict(orientation="h", y=-0.25))


# ---- overlap -------------------------------------------------------------

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
    return _layout(fig, height=560, legend=dict(orientation="h", y=-0.02, yanchor="top", x=0),
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
    return _layout(fig, height=320, barmode="group", legend=dict(orientation="h", y=1.12))


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
    return _layout(fig, height=300)


# ---- compare ---------------------------------------------------------------

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
    return _layout(fig, height=400, barmode="group", legend=dict(orientation="h", y=1.1))


# ---- update geometry ---------------------------------------------------------

GEOMETRY_SIDES = (("two_sided", "two-sided  ‖U_kᵀΔV_k‖²", ACCENT), ("left", "left  ‖U_kᵀΔ‖²", "#059669"),
                  ("right", "right  ‖ΔV_k‖²", "#d97706"))


def geometry_summary(result: Mapping) -> Mapping | None:
    """The whole-model geometry block, or None when it was not computed."""
    g = (result.get("summary") or {}).get("geometry") or {}
    return g if g.get("matrices") else None


def geometry_missing(result: Mapping) -> str:
    mode = ((result.get("summary") or {}).get("geometry") or {}).get("mode", "off")
    return (f"Update geometry not computed (geometry mode: {mode}). Submit again with geometry "
            "'sampled' or 'all' (CLI: --geometry sampled) to see it.")


def _headline(q: float, qs: Sequence[float]) -> int:
    return min(range(len(qs)), key=lambda i: abs(qs[i] - q))


def principal_energy(result: Mapping) -> go.Figure:
    """Share of ‖Δ‖² inside the base's top-k singular subspaces against k (% of min(m, n)),
    element-weighted over matrices, with each side's random baseline dashed."""
    g = geometry_summary(result)
    if g is None:
        return empty(geometry_missing(result))
    xs = [100 * q for q in g["q"]]
    fig = go.Figure()
    for key, name, color in GEOMETRY_SIDES:
        ys = [None if v is None else 100 * v for v in g["energy"][key]]
        base = [100 * v for v in g["baseline"][key]]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=color, width=2),
                                 customdata=base, hovertemplate="k = %{x:g} % of min(m, n)<br>" + name.split()[0]
                                 + " %{y:.3f} % (random %{customdata:.3f} %)<extra></extra>"))
        fig.add_trace(go.Scatter(x=xs, y=base, mode="lines", name=f"{name.split()[0]} random baseline",
                                 line=dict(color=color, width=1.5, dash="dash"), hoverinfo="skip"))
    fig.update_xaxes(title_text="k (% of min(m, n))", tickvals=xs, ticktext=[f"{x:g} %" for x in xs])
    fig.update_yaxes(title_text="‖Δ‖² in the top-k subspace (%)", rangemode="tozero")
    return _layout(fig, title=f"Principal energy over {g['matrices']} matrices (element-weighted)",
                   height=380, legend=dict(orientation="h", y=-0.22))


def _geo_mean(records: Sequence[Mapping], pick) -> float | None:
    """Element-weighted mean of pick(geometry) over records that have one (None values skipped)."""
    total = acc = 0.0
    for r in records:
        g = r.get("geometry")
        v = pick(g) if g else None
        if v is not None:
            total += r.get("numel") or 0
            acc += (r.get("numel") or 0) * v
    return acc / total if total else None


def geometry_heatmap(tensors: Sequence[Mapping], q: float = 0.05) -> go.Figure:
    """Layers x modules: two-sided principal energy at k = q min(m, n), element-weighted, one
    block per stack; the hover puts it beside its random baseline."""
    rows = [r for r in tensors if r.get("geometry") and r.get("layer") is not None]
    if not rows:
        return empty("No matrix inside a layer has update geometry.")
    i = _headline(q, rows[0]["geometry"]["q"])
    cells: dict = {}
    for r in rows:
        cells.setdefault((r.get("stack"), r["layer"], r.get("module")), []).append(r)
    names = cell_tensors(rows)
    stacks = sorted({k[0] for k in cells}, key=lambda s: s or "")
    labels = N.stack_labels(stacks)
    per_stack = {s: sorted({k[1] for k in cells if k[0] == s}) for s in stacks}
    fig = make_subplots(rows=len(stacks), cols=1, vertical_spacing=min(0.08, 0.3 / len(stacks)),
                        row_heights=[len(per_stack[s]) + 2 for s in stacks],
                        subplot_titles=[labels[s] for s in stacks] if len(stacks) > 1 else None)
    for row, stack in enumerate(stacks, start=1):
        layers = per_stack[stack]
        modules = _module_order({k[2] for k in cells if k[0] == stack})
        z, text, custom = [], [], []
        for layer in layers:
            zr, tr, cr = [], [], []
            for m in modules:
                recs = cells.get((stack, layer, m))
                if not recs:
                    zr.append(None)
                    tr.append("")
                    cr.append("")
                    continue
                e = _geo_mean(recs, lambda g: g["energy"]["two_sided"][i])
                b = _geo_mean(recs, lambda g: g["baseline"]["two_sided"][i])
                zr.append(None if e is None else 100 * e)
                tr.append(f"random {100 * b:.3f} %" + (f" · {e / b:.2f}× random" if e is not None and b else "")
                          + f"<br>{len(recs)} tensor(s)")
                cr.append(names[(stack, layer, m)])
            z.append(zr)
            text.append(tr)
            custom.append(cr)
        fig.add_trace(go.Heatmap(
            z=z, x=modules, y=[str(x) for x in layers], text=text, customdata=custom, name=stack or "layers",
            coloraxis="coloraxis", hoverongaps=False, xgap=1, ygap=1,
            hovertemplate=f"{labels[stack]} %{{y}} · %{{x}}<br>%{{z:.3f}} % of ‖Δ‖² in the top "
                          f"{100 * rows[0]['geometry']['q'][i]:g} %<br>%{{text}}<extra></extra>",
        ), row=row, col=1)
        fig.update_yaxes(title_text="layer", autorange="reversed", type="category",
                         dtick=max(1, len(layers) // 20), row=row, col=1)
        fig.update_xaxes(type="category", tickangle=-30, row=row, col=1)
    fig.update_xaxes(title_text="module", row=len(stacks), col=1)
    fig.update_layout(coloraxis=dict(colorscale=HEATMAP_SCALE, colorbar=dict(
        title=dict(text="two-sided energy %", side="right"), thickness=12)))
    nrows = sum(len(v) for v in per_stack.values())
    return _layout(fig, height=max(260, min(1400, 80 + 18 * nrows + 110 * (len(stacks) - 1))))


def geometry_layers(tensors: Sequence[Mapping], q: float = 0.05) -> go.Figure:
    """Per layer of each stack: subspace rotation of U and V (mean sin of the principal angles
    at k = q min(m, n)) and spectral drift, element-weighted over the layer's matrices."""
    rows = [r for r in tensors if r.get("geometry")]
    if not rows:
        return empty("No matrix has update geometry.")
    i = _headline(q, rows[0]["geometry"]["q"])
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.get("stack"), r.get("layer")), []).append(r)
    keys = sorted((k for k in groups if k[1] is not None), key=lambda k: (k[0] or "", k[1]))
    names = N.layer_names(keys)
    if (None, None) in groups:
        keys.append((None, None))
        names.append("outside")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=(f"subspace rotation at k = {100 * rows[0]['geometry']['q'][i]:g} % "
                                        "(mean sin of principal angles)", "spectral drift ‖σ(W̃) − σ(W)‖ / ‖σ(W)‖"))
    for key, name, color in (("u_mean_sin", "U (left)", ACCENT), ("v_mean_sin", "V (right)", REFERENCE)):
        deg = "u_max_deg" if key.startswith("u") else "v_max_deg"
        fig.add_trace(go.Scatter(
            x=names, y=[_geo_mean(groups[k], lambda g: g["rotation"][key][i]) for k in keys],
            customdata=[_geo_mean(groups[k], lambda g: g["rotation"][deg][i]) for k in keys],
            mode="lines+markers", name=name, line=dict(color=color, width=2),
            hovertemplate="layer %{x}<br>mean sin %{y:.4f}<br>largest angle ≈ %{customdata:.2f}° "
                          "(element-weighted)<extra>" + name + "</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[_geo_mean(groups[k], lambda g: g["drift"]) for k in keys], name="drift",
                         marker_color=MUTED, hovertemplate="layer %{x}<br>drift %{y:.3g}<extra></extra>"),
                  row=2, col=1)
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_xaxes(type="category", title_text="layer", row=2, col=1)
    fig.update_yaxes(title_text="mean sin θ", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="drift", rangemode="tozero", row=2, col=1)
    return _layout(fig, height=460, legend=dict(orientation="h", y=1.12))


# ---- tensor drill-down ----------------------------------------------------------

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
    return _layout(fig, height=520, title=f"Changed elements at t = {N.fmt_tol(density.get('tolerance') or 0)}")


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
    return _layout(fig, height=340)


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
    return _layout(fig, height=300, title=f"ULP distance · {100 * counts[0] / total:.1f} % moved one step")


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
    return _layout(fig, height=340, title=f"Singular values · drift {g.get('drift', 0):.3g}",
                   legend=dict(orientation="h", y=1.12))
