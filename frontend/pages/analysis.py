"""Analysis page at its permalink /a/<id>: live progress, then every figure.

View state (tolerance t, metric, tab) is read from and written to the URL
query string, so a copied link reopens the same view.
"""

from __future__ import annotations

import asyncio
import math

from dash import Input, Output, State, dash_table, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import numbers as N
from .. import report as R
from .. import summary as S
from ..apiclient import ApiError, message
from ..figures import analysis as F
from ..figures import rank as FR
from ..figures import theme as T
from ..notes import comparison_notes
from . import patch_card
from .picker import label
from .precision import precision_content
from .progress import progress_fraction, progress_text  # noqa: F401 (the page's progress line; tests read it here)
from .shell import badge, card, notice, stat
from .tensor import href as tensor_href

TABS = (("overview", "Tolerance"), ("layers", "Layers × modules"), ("tensors", "Tensors"),
        ("precision", "Precision"), ("rank", "Rank"), ("geometry", "Geometry"))
METRICS = ("sparsity", "density")
SLIDER_ZERO = -10.0   # slider position standing for t = 0 (bit-exact)
GRAPH_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}


def view_state(query: dict) -> tuple[float, str, str]:
    t = N.parse_tolerance(query.get("t"))
    metric = query.get("metric") if query.get("metric") in METRICS else "sparsity"
    tab = query.get("tab") if query.get("tab") in dict(TABS) else "overview"
    return t, metric, tab


def slider_to_t(v: float | None) -> float:
    if v is None or v <= SLIDER_ZERO + 1e-9:
        return N.DEFAULT_TOLERANCE if v is None else 0.0
    return N.snap(10.0 ** v, rel=1e-3)


def t_to_slider(t: float) -> float:
    return SLIDER_ZERO if t <= 0 else round(math.log10(t), 2)


def layout(analysis_id: str, query: dict):
    t, metric, tab = view_state(query)
    marks = {SLIDER_ZERO: "0"} | {e: f"1e{e}" for e in range(-9, -1)}
    return html.Div(className="analysis", children=[
        dcc.Store(id="an-id", data=analysis_id),
        dcc.Store(id="an-state", data=None),
        # the URL's exact t (the slider holds it only to 0.01 decades); without one,
        # the view opens at the tolerance the analysis was run with
        dcc.Store(id="an-t0", data=t if "t" in query else None),
        dcc.Interval(id="an-tick", interval=1000, n_intervals=0),
        card(
            html.Div(className="card-head", children=[
                html.Div([
                    html.H2(id="an-title", children="Analysis " + analysis_id, className="pair-title"),
                    html.Div(id="an-meta", className="muted small"),
                ]),
                html.Div(className="head-actions", children=[
                    html.Span(id="an-badge"),
                    html.Span(className="btn btn-ghost copy-btn", children=[
                        dcc.Clipboard(id="an-copy", title="Copy a link to this exact view",
                                      className="clipboard"),
                        html.Span("Copy link", className="copy-label"),
                    ]),
                ]),
            ]),
            html.Div(id="an-progress", className="progress-block", style={"display": "none"}, children=[
                html.Div(className="progress", children=html.Div(id="an-bar", className="progress-fill")),
                html.Div(id="an-progress-text", className="progress-text"),
                dcc.Graph(id="an-partial", config=GRAPH_CONFIG, figure=T.empty("Waiting for the first tensors…")),
            ]),
            html.Div(id="an-error", style={"display": "none"}, children=[
                html.Div(id="an-error-text"),
                html.Div(id="an-retry-row", className="form-actions", children=[
                    html.Button("Retry", id="an-retry", n_clicks=0, className="btn btn-primary"),
                    html.Span(id="an-retry-msg", className="muted"),
                ]),
            ]),
        ),
        html.Div(id="an-results", style={"display": "none"}, children=[
            card(className="controls", children=[
                html.Div(className="control-tol", children=[
                    html.Div(className="control-label", children=[
                        "View tolerance ", html.B(id="an-tol-label"),
                        html.Span(" (exact counts at 0 and 1e-8 … 1e-3; in between ≈ interpolated)",
                                  className="muted small"),
                    ]),
                    dcc.Slider(id="an-tol", min=SLIDER_ZERO, max=-2, step=0.05, value=t_to_slider(t),
                               marks=marks, updatemode="mouseup", included=False,
                               allow_direct_input=False),
                ]),
                html.Div(className="control-metric", children=[
                    html.Div("Show", className="control-label"),
                    dcc.RadioItems(id="an-metric", value=metric, inline=True, className="segmented",
                                   options=[{"label": "sparsity", "value": "sparsity"},
                                            {"label": "density", "value": "density"}]),
                ]),
            ]),
            html.Div(id="an-cards", className="stats"),
            html.Div(id="an-warnings"),
            html.P(id="an-summary", className="plain-summary"),
            dcc.Tabs(id="an-tabs", value=tab, className="tabs", children=[
                dcc.Tab(label=label, value=value, className="tab", selected_className="tab-selected")
                for value, label in TABS]),
            card(html.Div(id="an-tab-content"), className="tab-card"),
            card(className="downloads", children=[
                html.Span("Download", className="control-label"),
                html.Button("Download report", id="dl-report", n_clicks=0, className="btn btn-ghost",
                            title="One HTML file with every figure; opens offline, no server needed"),
                dcc.Download(id="dl-report-file"),
                html.A("result JSON", id="dl-json", href=f"/api/analyses/{analysis_id}",
                       download=f"subnetscope-{analysis_id}.json", className="btn btn-ghost"),
                html.A("per-tensor CSV", id="dl-csv", href=f"/api/analyses/{analysis_id}/tensors?format=csv",
                       download=f"subnetscope-{analysis_id}-tensors.csv", className="btn btn-ghost"),
                html.A("masks (safetensors)", id="dl-masks", href=f"/api/analyses/{analysis_id}/masks",
                       download=f"subnetscope-{analysis_id}-masks.safetensors", className="btn btn-ghost"),
            ]),
            patch_card.layout(analysis_id),
        ]),
    ])


# ---- pieces -----------------------------------------------------------------

def _meta(analysis: dict) -> str:
    result = analysis.get("result") or {}
    req = analysis.get("request") or {}
    parts = []
    for side in ("base", "tuned"):
        src = result.get(side) or {}
        if src.get("sha"):
            rev = src.get("revision")
            parts.append(f"{side} @ {src['sha'][:10]}" + (f" ({rev})" if rev and rev != "main" else ""))
    opts = result.get("options") or req
    if opts.get("tolerance") is not None:
        parts.append(f"t = {N.fmt_tol(float(opts['tolerance']))}")
    if opts.get("rank"):
        parts.append(f"rank {opts['rank']}")
    if opts.get("geometry") and opts["geometry"] != "off":
        parts.append(f"geometry {opts['geometry']}")
    summary = result.get("summary") or {}
    if summary.get("seconds") is not None:
        parts.append(f"{summary['seconds']:.1f} s on {summary.get('device', '?')}")
    if result.get("engine_version"):
        parts.append(f"engine {result['engine_version']}")
    return " · ".join(parts)


def error_block(analysis: dict, stall_hint: str = ""):
    status = analysis.get("status")
    err = analysis.get("error") or {}
    if status == "stalled":
        head = "This analysis stalled"
        text = (err.get("message") or "Its worker stopped reporting progress (it may have been "
                "killed or lost its connection).") + " Finished tensors are kept; a retry resumes from them."
    else:
        head = "This analysis failed"
        text = err.get("message") or "The worker gave no reason."
    code = err.get("code")
    return notice([html.B(head), html.Span(f" [{code}]" if code else "", className="mono"),
                   html.Br(), text], "error", id="an-error-notice")


def cards(result: dict, t: float):
    summary = result.get("summary") or {}
    numel = summary.get("numel") or 0
    s, exact = N.result_sparsity(result, t)
    changed, _ = N.changed_at(summary, t, result.get("curve_tolerances"))
    approx = "" if exact else "≈ "
    ref = (result.get("reference") or {})
    ref_val = (ref.get("sparsity") or {}).get(N.tol_key(t))
    ref_sub = None
    if ref_val is not None:
        ref_sub = html.Span(["study reports ", html.B(f"{ref_val:.2f} %", id="ref-value"),
                             html.Br(), html.Span(ref.get("source", ""), className="muted")])
    elif ref.get("sparsity"):
        keys = ", ".join(f"t = {N.fmt_tol(float(k))}: {v:.2f} %" for k, v in ref["sparsity"].items())
        ref_sub = html.Span(["study reports ", keys], className="muted")
    bit, _ = N.result_sparsity(result, 0.0)
    rank = summary.get("rank") or {}
    rank_val = (html.Span("not computed", className="stat-na") if rank.get("mean") is None
                else N.fmt_pct(rank["mean"], 1))
    rank_sub = None
    if rank.get("mean") is not None:
        rank_sub = f"the study's rule (float32 matrix_rank), unweighted mean over {rank.get('matrices', '?')} matrices"
        if rank.get("weighted_mean") is not None:
            rank_sub += f"; element-weighted {N.fmt_pct(rank['weighted_mean'], 1)}"
        f64 = rank.get("f64") or {}
        if f64.get("mean") is not None:
            rank_sub = html.Span([rank_sub, html.Br(), "float64 numerical rank ",
                                  html.B(N.fmt_pct(f64["mean"], 1), id="stat-rank-f64"),
                                  f" (weighted {N.fmt_pct(f64['weighted_mean'], 1)})"
                                  if f64.get("weighted_mean") is not None else ""])
    return [
        stat(f"Update sparsity at t = {N.fmt_tol(t)}", html.Span(approx + N.fmt_pct(s), id="stat-sparsity"),
             ref_sub or ("exact count" if exact else "interpolated between exact counts"),
             className="stat-main"),
        stat("Bit-exact sparsity (t = 0)", html.Span(N.fmt_pct(bit), id="stat-bitexact"),
             f"{N.fmt_int((summary.get('changed') or {}).get('0.0'))} elements differ at all"),
        stat("Elements compared", html.Span(N.fmt_int(numel), id="stat-numel"),
             f"in {summary.get('tensors', len(result.get('tensors') or []))} tensors"
             + (f"; {N.fmt_int(summary['added'])} added rows not compared" if summary.get("added") else "")
             + (f"; {N.fmt_int(summary['removed'])} removed rows not compared" if summary.get("removed") else "")),
        stat(f"Changed at t = {N.fmt_tol(t)}", html.Span(approx + N.fmt_int(changed), id="stat-changed"),
             f"density {approx}{N.fmt_pct(1 - s) if not math.isnan(s) else '–'}"),
        stat("Mean update rank", html.Span(rank_val, id="stat-rank"), rank_sub or f"rank mode: {rank.get('mode', 'off')}"),
        stat("‖Δ‖ / ‖W‖", html.Span(_ratio(summary), id="stat-ratio"),
             f"max |Δ| = {summary['max_abs_delta']:.3g}" if summary.get("max_abs_delta") is not None else None),
    ]


def _ratio(summary: dict) -> str:
    ratio, base = summary.get("ratio"), summary.get("base_fro")
    # a non-finite base norm (inf/NaN weights) makes the ratio meaningless, not zero
    if ratio is None or base is None or not math.isfinite(base) or not math.isfinite(ratio):
        return "–"
    return f"{ratio:.3g}"


def warnings_block(result: dict):
    items = comparison_notes(result)
    if not items:
        return None
    return notice([html.B("Notes on this comparison"),
                   html.Ul([html.Li(w) for w in items])], "warn", id="an-warnings-list")


def exact_table(result: dict, t: float):
    summary = result.get("summary") or {}
    numel = summary.get("numel") or 0
    ref = ((result.get("reference") or {}).get("sparsity") or {})
    rows = []
    for et in result.get("tolerances") or N.EXACT_TOLERANCES:
        key = N.tol_key(et)
        c = (summary.get("changed") or {}).get(key)
        s = (summary.get("sparsity") or {}).get(key)
        if s is None and c is not None and numel:
            s = 1 - c / numel
        rows.append(html.Tr(className="row-current" if et == t else "", children=[
            html.Td(N.fmt_tol(et), className="mono"), html.Td(N.fmt_int(c), className="num"),
            html.Td(N.fmt_pct(s), className="num"),
            html.Td(f"{ref[key]:.2f} %" if key in ref else "", className="num ref"),
        ]))
    return html.Table(className="table compact", id="exact-table", children=[
        html.Thead(html.Tr([html.Th("t"), html.Th("changed", className="num"),
                            html.Th("sparsity", className="num"),
                            html.Th("study", className="num") if ref else html.Th("")])),
        html.Tbody(rows)])


TABLE_COLUMNS = [
    ("name", "tensor", "text"), ("stack", "stack", "text"), ("layer", "layer", "numeric"), ("module", "module", "text"),
    ("shape", "shape", "text"), ("dtype", "dtype", "text"), ("numel", "elements", "numeric"),
    ("changed", "changed at t", "numeric"), ("sparsity", "sparsity %", "numeric"),
    ("exact_changed", "changed at 0", "numeric"), ("row_coverage", "row cov.", "numeric"),
    ("col_coverage", "col cov.", "numeric"), ("ratio", "‖Δ‖/‖W‖", "numeric"),
    ("max_abs_delta", "max |Δ|", "numeric"), ("rank_ratio", "rank ratio (study, f32)", "numeric"),
    ("rank_f64_ratio", "rank ratio (float64)", "numeric"),
]


def rank_note(result: dict):
    """Which rank is the study's, and where the float64 rank reads higher."""
    gap = FR.rank_gap(result)
    text = ["Filled markers: the study's rank, float32 torch.linalg.matrix_rank(Δ) with its default "
            "tolerance (σ > σ₁ · max(m, n) · 2⁻²³). Open diamonds: the float64 numerical rank "
            "(σ > σ₁ · max(m, n) · 2⁻⁵²). "]
    if gap["matrices"] and gap["lower"]:
        text.append(html.Span(f"The float32 rule reads {gap['lower']} of {gap['matrices']} matrices below their "
                              f"float64 rank (by up to {gap['max_gap']}, e.g. {gap['example']}): singular "
                              "values in a long tail under float32's threshold, not a low-rank update.",
                              id="rank-gap"))
    elif gap["matrices"]:
        text.append(html.Span(f"Both rules agree on all {gap['matrices']} matrices.", id="rank-gap"))
    return html.P(text, className="muted small")


def tensor_table(result: dict, t: float):
    rows = N.tensor_rows(result.get("tensors") or [], t, result.get("curve_tolerances"))
    return dash_table.DataTable(
        id="tensor-table", data=rows,
        columns=[{"id": c, "name": n, "type": ty} for c, n, ty in TABLE_COLUMNS],
        sort_action="native", filter_action="native", page_action="native", page_size=25,
        sort_by=[], style_as_list_view=True,
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": T.FONT, "fontSize": "13px", "padding": "6px 10px",
                    "textAlign": "right", "maxWidth": "420px", "overflow": "hidden",
                    "textOverflow": "ellipsis"},
        style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "left"}
                                for c in ("name", "stack", "module", "shape", "dtype")],
        style_header={"fontWeight": "600", "backgroundColor": "#f8fafc", "color": "#334155"},
        tooltip_duration=None,
    )


def tab_content(result: dict, tab: str, t: float, metric: str):
    curve = result.get("curve_tolerances")
    tensors = result.get("tensors") or []
    g = lambda fig, gid: dcc.Graph(id=gid, figure=fig, config=GRAPH_CONFIG)  # noqa: E731
    if tab == "layers":
        return [html.H3(f"Layers × modules: {metric} at t = {N.fmt_tol(t)}"),
                g(F.layer_module_heatmap(tensors, curve, t, metric), "fig-heatmap"),
                html.H3(f"Per layer: {metric} at t = {N.fmt_tol(t)}"),
                g(F.layer_bars(tensors, curve, t, metric), "fig-layers")]
    if tab == "tensors":
        return [html.H3(f"Per tensor at t = {N.fmt_tol(t)} (click a header to sort, type to filter)"),
                tensor_table(result, t)]
    if tab == "precision":
        return precision_content(result, t, g)
    if tab == "rank":
        return [g(FR.rank_chart(result), "fig-rank"), rank_note(result)]
    if tab == "geometry":
        return geometry_content(result, g)
    return [html.Div(className="two-col", children=[
        html.Div(g(F.tolerance_curve(result, t, metric), "fig-curve"), className="col-wide"),
        html.Div([html.H3("Exact counts"), exact_table(result, t)], className="col-narrow"),
    ])]


def geometry_content(result: dict, g):
    if F.geometry_summary(result) is None:
        return [notice(F.geometry_missing(result), "info", id="geo-missing"),
                html.P(["Geometry asks where the update points: the share of ‖Δ‖² inside the base's top-k "
                        "singular subspaces, how far those subspaces turn and how the spectrum moves "
                        "(three float64 SVDs per matrix). API: ", html.Code('"geometry": "sampled"'),
                        "; CLI: ", html.Code("subnetscope analyze BASE TUNED --geometry sampled"), "."],
                       className="muted small")]
    s = F.geometry_summary(result)
    i = F.headline_index(0.05, s["q"])
    rot = s["rotation"]
    return [
        html.Div(className="stats", id="geo-cards", children=[
            stat("Principal energy at k = 5 %", html.Span(N.fmt_pct(s["energy"]["two_sided"][i], 3), id="geo-energy"),
                 f"two-sided, element-weighted; random {N.fmt_pct(s['baseline']['two_sided'][i], 3)}"),
            stat("Subspace rotation (U / V)", html.Span(f"{rot['u_mean_sin'][i]:.4f} / {rot['v_mean_sin'][i]:.4f}",
                                                        id="geo-rotation"),
                 f"mean sin of principal angles at k = 5 %; largest {rot['u_max_deg'][i]:.2f}° / "
                 f"{rot['v_max_deg'][i]:.2f}° (means)"),
            stat("Spectral drift", html.Span(f"{s['drift']:.3g}" if s.get("drift") is not None else "–",
                                             id="geo-drift"),
                 f"over {s['matrices']} matrices ({s.get('mode', '?')}); SVDs took {s.get('seconds', 0):.1f} s"),
        ]),
        g(F.principal_energy(result), "fig-geo-energy"),
        html.H3("Layers × modules: two-sided principal energy at k = 5 % (click a cell for the tensor)"),
        g(F.geometry_heatmap(result.get("tensors") or []), "fig-geo-heatmap"),
        html.H3("Per layer: subspace rotation and spectral drift"),
        g(F.geometry_layers(result.get("tensors") or []), "fig-geo-layers"),
    ]


# ---- callbacks ----------------------------------------------------------------

def register(app, api):
    # Kept current as the view changes, so the click copies the view, not a stale URL.
    app.clientside_callback(
        "function(path, search) { return window.location.origin + path + (search || ''); }",
        Output("an-copy", "content"), Input("url", "pathname"), Input("url", "search"))

    @app.callback(
        Output("an-state", "data"), Output("an-title", "children"), Output("an-meta", "children"),
        Output("an-badge", "children"), Output("an-progress", "style"), Output("an-bar", "style"),
        Output("an-progress-text", "children"), Output("an-partial", "figure"),
        Output("an-error", "style"), Output("an-error-text", "children"),
        Output("an-results", "style"), Output("an-tick", "disabled"),
        Output("an-tol", "value"), Output("an-t0", "data"), Output("an-retry-row", "style"),
        Input("an-tick", "n_intervals"), State("an-id", "data"), State("an-state", "data"),
        State("an-t0", "data"),
    )
    async def poll(_n, analysis_id, state, t0):
        hide, show = {"display": "none"}, {"display": "block"}
        try:
            a = await api.analysis(analysis_id)
        except ApiError as err:
            # 404 is final; anything else (503: Redis down) keeps polling until it recovers
            return (no_update, "Analysis " + analysis_id, "", badge("unavailable"), hide, no_update,
                    no_update, no_update, show, notice(message(err), "error", id="an-error-notice"),
                    hide, err.status == 404, no_update, no_update, hide)
        status = a.get("status")
        new_state = {"status": status}
        state_out = no_update if state == new_state else new_state
        title, meta = label(a), _meta(a)
        if status == "done":
            slider, t_out = no_update, no_update
            if t0 is None:
                opened = (a.get("result") or {}).get("options", {}).get("tolerance")
                t_out = N.snap(float(opened)) if opened is not None else N.DEFAULT_TOLERANCE
                slider = t_to_slider(t_out)
            return (state_out, title, meta, badge(status), hide, no_update, no_update, no_update,
                    hide, no_update, show, True, slider, t_out, hide)
        if status in ("failed", "stalled"):
            return (state_out, title, meta, badge(status), hide, no_update, no_update, no_update,
                    show, error_block(a), hide, status == "failed", no_update, no_update, {})
        partial = a.get("partial") or []
        tol = float((a.get("request") or {}).get("tolerance") or N.DEFAULT_TOLERANCE)
        p = a.get("progress") or {}
        fig = F.layer_module_heatmap(
            partial, None, N.snap(tol), "sparsity",
            title=f"Partial: {len(partial)} of {p.get('tensors_total') or '?'} tensors so far "
                  f"(sparsity at t = {N.fmt_tol(tol)})") if partial else no_update
        bar = {"width": f"{100 * progress_fraction(a):.1f}%"}
        return (state_out, title, meta, badge(status), show, bar, progress_text(a), fig,
                hide, None, hide, False, no_update, no_update, hide)

    @app.callback(
        Output("an-cards", "children"), Output("an-warnings", "children"),
        Output("an-tab-content", "children"), Output("an-tol-label", "children"),
        Output("url", "search", allow_duplicate=True), Output("an-summary", "children"),
        Input("an-state", "data"), Input("an-tol", "value"), Input("an-metric", "value"),
        Input("an-tabs", "value"), State("an-id", "data"), State("url", "search"), State("an-t0", "data"),
        prevent_initial_call=True,
    )
    async def render(state, slider, metric, tab, analysis_id, search, t0):
        if not state or state.get("status") != "done":
            raise PreventUpdate
        t = t0 if t0 is not None and slider == t_to_slider(t0) else slider_to_t(slider)
        try:
            a = await api.analysis(analysis_id)
        except ApiError as err:
            return notice(message(err), "error"), None, None, N.fmt_tol(t), no_update, no_update
        result = a.get("result") or {}
        # figure building is CPU work; keep the event loop free for API requests
        content = await asyncio.to_thread(tab_content, result, tab, t, metric)
        new_search = f"?t={N.fmt_tol(t)}&metric={metric}&tab={tab}"
        return (cards(result, t), warnings_block(result), content, N.fmt_tol(t),
                no_update if search == new_search else new_search, S.plain_summary(result))

    @app.callback(Output("dl-report-file", "data"), Input("dl-report", "n_clicks"), State("an-id", "data"),
                  prevent_initial_call=True)
    async def download_report(n, analysis_id):
        if not n:
            raise PreventUpdate
        a = await api.analysis(analysis_id)
        page = await asyncio.to_thread(R.analysis_report, a.get("result") or {})
        return {"content": page, "filename": f"subnetscope-{analysis_id}.html", "type": "text/html"}

    def _go(analysis_id, click):
        name = ((click or {}).get("points") or [{}])[0].get("customdata")
        if not name:
            raise PreventUpdate
        return tensor_href(analysis_id, name), ""

    for graph in ("fig-heatmap", "fig-geo-heatmap"):
        app.callback(Output("url", "pathname", allow_duplicate=True), Output("url", "search", allow_duplicate=True),
                     Input(graph, "clickData"), State("an-id", "data"), prevent_initial_call=True,
                     )(lambda click, analysis_id: _go(analysis_id, click))

    @app.callback(Output("url", "pathname", allow_duplicate=True), Output("url", "search", allow_duplicate=True),
                  Input("tensor-table", "active_cell"), State("tensor-table", "derived_viewport_data"),
                  State("an-id", "data"), prevent_initial_call=True)
    def open_tensor(cell, rows, analysis_id):
        if not cell or not rows or cell.get("row") is None or cell["row"] >= len(rows):
            raise PreventUpdate
        return tensor_href(analysis_id, rows[cell["row"]]["name"]), ""

    @app.callback(
        Output("an-retry-msg", "children"), Output("an-tick", "disabled", allow_duplicate=True),
        Output("an-state", "data", allow_duplicate=True),
        Input("an-retry", "n_clicks"), State("an-id", "data"), State("api-token", "data"), prevent_initial_call=True,
    )
    async def retry(n, analysis_id, api_token):
        if not n:
            raise PreventUpdate
        try:
            await api.request("POST", f"/api/analyses/{analysis_id}/retry", token=api_token)
        except Exception as err:  # noqa: BLE001 - shown to the user
            return message(err), no_update, no_update
        return "Resubmitted; finished tensors are reused.", False, {"status": "retrying"}
