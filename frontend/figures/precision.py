"""Figures of the precision view (metrics.md, "Precision and magnitude"): pure functions of a result.

The Precision tab draws `magnitude_lines`, `one_step_by_magnitude`, `counterfactual_bars` and
says `sentence`; the single-file report draws `changed_by_magnitude` at its tolerance.

Is the sparsity real, or storage absorbing small updates? The changed share by base magnitude
(one line per exact tolerance, the spacing of the stored format drawn where one step exceeds
each tolerance), the share that moved at most one step, the storage counterfactual, and one
sentence that says what these numbers show, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from .. import numbers as N
from .theme import ACCENT, MUTED, REFERENCE, empty, layout

MAG_OFFSET = 128  # bins 2..255 hold |w| in [2^e, 2^(e+1)) at e + 128 (docs/CONTRACTS.md, summary.precision)
# Mantissa bits of each compared dtype: one step at |w| in [2^e, 2^(e+1)) is 2^(e - bits).
MANTISSA = {"bfloat16": 7, "float16": 10, "float32": 23, "float8_e4m3fn": 3, "float8_e5m2": 2}
TOLERANCE_COLORS = ("#0f172a", "#7c3aed", "#2563eb", "#0891b2", "#059669", "#d97706", "#dc2626")
SPLIT_EXPONENT = -7  # "small" weights: |w| < 2^-7 (~0.008), where a bf16 step is below 2^-14 (~6e-5)


def precision(result: Mapping) -> Mapping | None:
    return (result.get("summary") or {}).get("precision")


def compare_dtype(result: Mapping) -> str | None:
    """The compared dtype shared by most elements (for where one step exceeds a tolerance)."""
    by: dict[str, int] = {}
    for r in result.get("tensors") or []:
        by[r.get("compare_dtype")] = by.get(r.get("compare_dtype"), 0) + (r.get("numel") or 0)
    return max(by, key=by.get) if by else None


def _exponent_bins(p: Mapping) -> list[int]:
    """Positions in p["bins"] of the binary-exponent bins (zero, subnormal, inf/NaN have no place on a log axis)."""
    return [i for i, b in enumerate(p["bins"]) if 2 <= b <= 255]


def magnitude_lines(result: Mapping) -> go.Figure:
    """Changed share vs |w_base| (log axis), one line per exact tolerance; compared elements as grey bars;
    the bf16 step drawn: a dotted line, in each tolerance's colour, at the |w| from which one bf16 step
    (2^(e-7) for |w| in [2^e, 2^(e+1))) exceeds that tolerance, whatever the pair's own dtype."""
    p = precision(result)
    if not p:
        return empty("No precision figures in this result (analysed before they existed, or no float tensors).")
    idx = _exponent_bins(p)
    if not idx:
        return empty("Every compared weight is zero, subnormal or non-finite.")
    x = [2.0 ** (p["bins"][i] - MAG_OFFSET) * 1.5 for i in idx]  # the bin's middle on a log axis
    total = sum(p["compared"]) or 1
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=[100 * p["compared"][i] / total for i in idx], name="share of all weights",
                         marker_color="#e2e8f0", yaxis="y2", width=[0.9 * v / 1.5 for v in x],
                         hovertemplate="|w| ≈ %{x:.2g}: %{y:.2f} % of the weights<extra></extra>"))
    keys = list(p["changed"])
    for j, key in enumerate(keys):
        ys = [100 * p["changed"][key][i] / p["compared"][i] for i in idx]
        fig.add_trace(go.Scatter(x=x, y=ys, mode="lines+markers", name=f"t = {N.fmt_tol(float(key))}",
                                 line=dict(color=TOLERANCE_COLORS[j % len(TOLERANCE_COLORS)], width=2),
                                 marker=dict(size=5),
                                 hovertemplate="|w| ≈ %{x:.2g}: %{y:.2f} % changed<extra>" + f"t = {key}</extra>"))
    lo, hi = min(x) / 1.5, max(x) / 1.5 * 2
    for j, key in enumerate(keys):
        t = float(key)
        edge = t * 2.0 ** MANTISSA["bfloat16"]  # one bf16 step 2^(e - 7) > t from |w| ≈ t 2^7 on
        if t > 0 and lo <= edge <= hi:
            fig.add_vline(x=edge, line=dict(color=TOLERANCE_COLORS[j % len(TOLERANCE_COLORS)], dash="dot", width=1),
                          opacity=0.7)
    fig.add_annotation(text="dotted: the |w| above which one bf16 step exceeds t (same colour)",
                       x=0, y=1.02, xref="paper", yref="paper", showarrow=False, xanchor="left",
                       font=dict(size=11, color="#64748b"))
    fig.update_xaxes(type="log", title_text="|w| of the base (binary exponent bins)", exponentformat="power")
    fig.update_yaxes(title_text="changed (% of the weights in the bin)", rangemode="tozero")
    layout(fig, height=420, legend=dict(orientation="h", y=-0.22),
           yaxis2=dict(overlaying="y", side="right", showgrid=False, title_text="% of all weights",
                       rangemode="tozero", color=MUTED))
    fig.update_layout(barmode="overlay", margin=dict(r=60))
    return fig


def one_step_by_magnitude(result: Mapping) -> go.Figure:
    """Share of the moved elements that moved at most one step of their base's spacing, by |w|."""
    p = precision(result)
    share = (p or {}).get("one_step_share")
    if not p or not share:
        return empty("No ratio figures in this result.")
    idx = [i for i in _exponent_bins(p) if share[i] is not None]
    if not idx:
        return empty("No weight moved.")
    x = [2.0 ** (p["bins"][i] - MAG_OFFSET) * 1.5 for i in idx]
    fig = go.Figure(go.Scatter(x=x, y=[100 * share[i] for i in idx], mode="lines+markers", line=dict(color=ACCENT),
                               hovertemplate="|w| ≈ %{x:.2g}: %{y:.1f} % moved ≤ 1 step<extra></extra>"))
    fig.update_xaxes(type="log", title_text="|w| of the base", exponentformat="power")
    fig.update_yaxes(title_text="moved ≤ one step (% of moved)", range=[0, 105])
    return layout(fig, height=300)


def counterfactual_bars(result: Mapping) -> go.Figure | None:
    """Changed as stored beside changed after rounding both sides to bf16 (and fp16), at every exact
    tolerance; None when the pair is stored in bf16 or narrower (no counterfactual applies)."""
    cf = (precision(result) or {}).get("counterfactual") or {}
    if not cf:
        return None
    first = next(iter(cf.values()))
    keys = list(first["stored"])
    labels = [N.fmt_tol(float(k)) for k in keys]
    fig = go.Figure(go.Bar(x=labels, y=[first["stored"][k] for k in keys], name="as stored", marker_color=ACCENT))
    for name, entry, color in zip(cf, cf.values(), (REFERENCE, "#059669")):
        fig.add_trace(go.Bar(x=labels, y=[entry["rounded"][k] for k in keys], name=f"both rounded to {name}",
                             marker_color=color))
    fig.update_xaxes(title_text="tolerance t")
    fig.update_yaxes(title_text="changed elements")
    return layout(fig, height=340, barmode="group", legend=dict(orientation="h", y=1.12))


def split_shares(p: Mapping, key: str, exponent: int = SPLIT_EXPONENT) -> tuple[float | None, float | None, float]:
    """(changed share of weights with |w| < 2^exponent (zero and subnormal included), of the rest,
    share of all weights that are small)."""
    small = [i for i, b in enumerate(p["bins"]) if b < exponent + MAG_OFFSET]
    n_small = sum(p["compared"][i] for i in small)
    c_small = sum(p["changed"][key][i] for i in small)
    n_all, c_all = sum(p["compared"]), sum(p["changed"][key])
    n_big, c_big = n_all - n_small, c_all - c_small
    return (c_small / n_small if n_small else None, c_big / n_big if n_big else None,
            n_small / n_all if n_all else 0.0)


def erased_share(entry: Mapping, key: str = "0.0") -> float | None:
    stored = entry["stored"].get(key, 0)
    return 1 - entry["rounded"].get(key, 0) / stored if stored else None


def sentence(result: Mapping, t: float) -> str:
    """What the precision numbers say at tolerance t, in one or two sentences, with no verdict."""
    p = precision(result)
    if not p:
        return "This result has no precision figures."
    key = N.tol_key(N.snap(t))
    if key not in p["changed"]:
        key = "1e-05"
    small, big, share_small = split_shares(p, key)
    s = result.get("summary") or {}
    one = (s.get("ulp") or {}).get("one_step_share")
    parts = []
    if small is not None and big is not None:
        parts.append(f"At t = {N.fmt_tol(float(key))}, {N.fmt_pct(small)} of the weights with |w| < 2^{SPLIT_EXPONENT} "
                     f"(≈ {2.0 ** SPLIT_EXPONENT:.4f}; "
                     f"{N.fmt_pct(share_small)} of all weights) changed, against {N.fmt_pct(big)} of the larger ones.")
    if one is not None:
        parts.append(f"{N.fmt_pct(one)} of the changed elements moved exactly one representable step.")
    for name, entry in (p.get("counterfactual") or {}).items():
        erased = erased_share(entry)
        if erased is not None:
            parts.append(f"Rounding both checkpoints to {name} would leave {entry['rounded']['0.0']:,} of the "
                         f"{entry['stored']['0.0']:,} changed elements: {N.fmt_pct(erased)} of these updates are "
                         f"smaller than {name} storage can show.")
    if not p.get("counterfactual"):
        dtype = compare_dtype(result)
        parts.append(f"Stored in {dtype}: no storage counterfactual applies (it needs both sides wider than bf16, "
                     "e.g. the fp32 master weights).")
    return " ".join(parts)


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
