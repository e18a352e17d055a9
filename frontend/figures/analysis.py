"""Figures of the analysis page (result schema 1, docs/CONTRACTS.md): pure functions.

No Dash, no Redis, no HTTP: each function takes plain dicts and returns a
`plotly.graph_objects.Figure`, so the pages stay thin, the report draws the same figures, and
they can be unit-tested against real engine output. Optional fields (rank, ulp, curve,
geometry) may be missing or null; a figure then says what is missing instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import numbers as N
from .theme import ACCENT, HEATMAP_SCALE, MUTED, REFERENCE, empty, layout


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
    return layout(fig, showlegend=False)


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
    fig = layout(fig, title=title, height=plot_px + top + labels_px + 24 + (24 if len(stacks) > 1 else 0))
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
    return layout(fig, height=300)


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
    return layout(fig, title=title, height=320)


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
    return layout(fig, height=340, legend=dict(orientation="h", y=-0.25))


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


def headline_index(q: float, qs: Sequence[float]) -> int:
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
    return layout(fig, title=f"Principal energy over {g['matrices']} matrices (element-weighted)",
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
    i = headline_index(q, rows[0]["geometry"]["q"])
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
    return layout(fig, height=max(260, min(1400, 80 + 18 * nrows + 110 * (len(stacks) - 1))))


def geometry_layers(tensors: Sequence[Mapping], q: float = 0.05) -> go.Figure:
    """Per layer of each stack: subspace rotation of U and V (mean sin of the principal angles
    at k = q min(m, n)) and spectral drift, element-weighted over the layer's matrices."""
    rows = [r for r in tensors if r.get("geometry")]
    if not rows:
        return empty("No matrix has update geometry.")
    i = headline_index(q, rows[0]["geometry"]["q"])
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
    return layout(fig, height=460, legend=dict(orientation="h", y=1.12))
