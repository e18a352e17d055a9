"""Tensor drill-down at /a/<id>/t/<tensor name>: where inside one matrix the changes fall.

The density image and coverage histograms come from the analysis's mask file
(GET /api/analyses/<id>/tensors/<name>/density, streamed in row blocks, so a
128k-row embedding is cheap); the rest from the tensor's record. View state
(density colour scale, spectrum axes) lives in the query string.
"""

from __future__ import annotations

from urllib.parse import quote

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import numbers as N
from ..apiclient import ApiError, message
from ..figures import analysis as FA
from ..figures import tensor as F
from ..figures import theme as T
from .shell import card, notice, stat

SCALES = ("linear", "log")
GRAPH_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}
_density_cache: dict[tuple[str, str], dict] = {}  # done analyses never change


def href(analysis_id: str, name: str) -> str:
    return f"/a/{analysis_id}/t/{quote(name, safe='')}"


def view_state(query: dict) -> tuple[str, str]:
    scale = query.get("scale") if query.get("scale") in SCALES else "linear"
    spec = query.get("spec") if query.get("spec") in SCALES else "log"
    return scale, spec


def layout(analysis_id: str, name: str, query: dict):
    scale, spec = view_state(query)
    radio = lambda rid, value: dcc.RadioItems(  # noqa: E731
        id=rid, value=value, inline=True, className="segmented",
        options=[{"label": s, "value": s} for s in SCALES])
    return html.Div(className="tensor-page", children=[
        dcc.Store(id="tn-key", data={"id": analysis_id, "name": name}),
        card(
            html.Div(className="card-head", children=[
                html.Div([
                    html.Div(dcc.Link("← back to the analysis", href=f"/a/{analysis_id}?tab=tensors",
                                      id="tn-back"), className="small"),
                    html.H2(html.Code(name), id="tn-title", className="pair-title"),
                    html.Div(id="tn-meta", className="muted small"),
                ]),
            ]),
            html.Div(id="tn-cards", className="stats"),
            html.Div(id="tn-error"),
        ),
        card(className="controls", children=[
            html.Div(className="control-metric", children=[html.Div("Density colour", className="control-label"),
                                                           radio("tn-scale", scale)]),
            html.Div(className="control-metric", children=[html.Div("Spectrum axes", className="control-label"),
                                                           radio("tn-spec", spec)]),
        ]),
        card(dcc.Loading(dcc.Graph(id="tn-density", config=GRAPH_CONFIG, figure=T.empty("Loading the mask…")))),
        card(dcc.Graph(id="tn-coverage", config=GRAPH_CONFIG, figure=T.empty("Loading…"))),
        card(dcc.Graph(id="tn-ulp", config=GRAPH_CONFIG, figure=T.empty("Loading…"))),
        card(dcc.Graph(id="tn-spectra", config=GRAPH_CONFIG, figure=T.empty("Loading…"))),
    ])


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def cards(record: dict, t: float, curve) -> list:
    changed, exact = N.changed_at(record, t, curve)
    numel = record.get("numel") or 0
    g = record.get("geometry")
    out = [
        stat(f"Changed at t = {N.fmt_tol(t)}", html.Span(("" if exact else "≈ ") + N.fmt_int(changed), id="tn-changed"),
             f"of {N.fmt_int(numel)} · sparsity {N.fmt_pct(1 - changed / numel) if numel else '–'}",
             className="stat-main"),
        stat("Row / column coverage", html.Span(f"{N.fmt_pct(record.get('row_coverage'), 1)} / "
                                                f"{N.fmt_pct(record.get('col_coverage'), 1)}", id="tn-coverage-val"),
             "rows (columns) with at least one changed element"),
        stat("‖Δ‖ / ‖W‖", _fmt(record.get("ratio"), ".3g"), f"max |Δ| = {_fmt(record.get('max_abs_delta'), '.3g')}"),
        stat("Update rank", "not computed" if record.get("rank") is None else N.fmt_int(record["rank"]),
             None if record.get("rank_ratio") is None else f"{N.fmt_pct(record['rank_ratio'], 1)} of full"),
    ]
    q = record.get("quantization")
    if q:
        out.append(quantization_stat(q))
    if g:
        i = FA.headline_index(0.05, g["q"])
        e, b = g["energy"]["two_sided"][i], g["baseline"]["two_sided"][i]
        out += [
            stat(f"Principal energy (k = {g['k'][i]})", html.Span(N.fmt_pct(e, 3), id="tn-energy"),
                 f"two-sided; random {N.fmt_pct(b, 3)} · left {N.fmt_pct(g['energy']['left'][i], 2)}, "
                 f"right {N.fmt_pct(g['energy']['right'][i], 2)}"),
            stat("Subspace rotation", html.Span(f"{_fmt(g['rotation']['u_mean_sin'][i], '.4f')} / "
                                                f"{_fmt(g['rotation']['v_mean_sin'][i], '.4f')}", id="tn-rotation"),
                 f"mean sin U / V at k = {g['k'][i]}; largest {_fmt(g['rotation']['u_max_deg'][i], '.2f')}° / "
                 f"{_fmt(g['rotation']['v_max_deg'][i], '.2f')}°"),
            stat("Spectral drift", html.Span(_fmt(g.get("drift"), ".3g"), id="tn-drift"),
                 f"stable rank of Δ {_fmt(g.get('stable_rank'), '.1f')}, effective {_fmt(g.get('effective_rank'), '.1f')}"),
        ]
    else:
        out.append(stat("Update geometry", html.Span("not computed", className="stat-na", id="tn-energy"),
                        "submit with geometry 'sampled' or 'all'"))
    return out


def quantization_stat(q: dict):
    """Block-scaled fp8 / MXFP4: the values above are dequantized; the stored codes and scales, secondary."""
    formats = q["base"] if q.get("base") == q.get("tuned") else f"{q.get('base') or 'unquantized'} vs {q.get('tuned') or 'unquantized'}"
    if "codes_changed" not in q:
        return stat("Quantized storage", html.Span("values compared", id="tn-quant"), f"{formats}; dequantized, float64")
    return stat("Stored codes changed", html.Span(N.fmt_int(q["codes_changed"]), id="tn-quant"),
                f"{formats}; scale blocks changed {N.fmt_int(q['scale_blocks_changed'])} of {N.fmt_int(q['scale_blocks'])}")


def register(app, api):
    @app.callback(
        Output("tn-cards", "children"), Output("tn-meta", "children"), Output("tn-error", "children"),
        Output("tn-density", "figure"), Output("tn-coverage", "figure"), Output("tn-ulp", "figure"),
        Output("tn-spectra", "figure"), Output("url", "search", allow_duplicate=True),
        Input("tn-key", "data"), Input("tn-scale", "value"), Input("tn-spec", "value"), State("url", "search"),
        prevent_initial_call="initial_duplicate",
    )
    async def render(key, scale, spec, search):
        if not key:
            raise PreventUpdate
        aid, name = key["id"], key["name"]
        blank = T.empty("–")
        try:
            a = await api.analysis(aid)
        except ApiError as err:
            return [], "", notice(message(err), "error", id="tn-error-notice"), blank, blank, blank, blank, no_update
        result = a.get("result") or {}
        record = next((r for r in result.get("tensors") or [] if r["name"] == name), None)
        if a.get("status") != "done" or record is None:
            why = (f"Analysis {aid} is {a.get('status')}; open it again once it is done."
                   if a.get("status") != "done" else f"Analysis {aid} compared no tensor named {name!r}.")
            return [], "", notice(why, "error", id="tn-error-notice"), blank, blank, blank, blank, no_update
        t = float((result.get("options") or {}).get("tolerance") or N.DEFAULT_TOLERANCE)
        err = None
        dens = _density_cache.get((aid, name))
        if dens is None:
            try:
                dens = await api.request("GET", f"/api/analyses/{aid}/tensors/{quote(name, safe='')}/density")
                _density_cache[(aid, name)] = dens
                while len(_density_cache) > 64:
                    _density_cache.pop(next(iter(_density_cache)))
            except ApiError as exc:
                err = notice(f"No density image: {message(exc)}", "warn", id="tn-error-notice")
                dens = {}
        shape = "×".join(str(x) for x in record.get("shape") or [])
        where = " · ".join(x for x in (record.get("stack") and f"{record['stack']} {record.get('layer')}",
                                        record.get("module")) if x)
        meta = f"{shape} · {record.get('dtype')} · {where}" if where else f"{shape} · {record.get('dtype')}"
        buckets = ((result.get("summary") or {}).get("ulp") or {}).get("buckets") or []
        new_search = f"?scale={scale}&spec={spec}"
        return (cards(record, t, result.get("curve_tolerances")), meta, err,
                F.mask_density(dens, scale), F.coverage_histograms(dens), F.tensor_ulp(record, buckets),
                F.singular_spectra(record, spec), no_update if search == new_search else new_search)
