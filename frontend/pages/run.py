"""Training run at its permalink /r/<id>: per-checkpoint progress, then the dynamics.

View state (tolerance `t`, heatmap metric `hm`) lives in the URL query string. Every
point, heatmap cell and table row links to the analysis it comes from (/a/<id>).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import numbers as N
from .. import report as R
from ..apiclient import ApiError, message
from ..figures import run as RF
from .shell import badge, card, notice, stat

GRAPH_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}
GRAPHS = ("fig-run-sparsity", "fig-run-consecutive", "fig-run-ever", "fig-run-heatmap")
_DONE: OrderedDict[str, dict] = OrderedDict()  # finished runs never change (content-addressed ids)


def view_state(query: dict) -> tuple[float, str]:
    t = N.parse_tolerance(query.get("t"))
    t = t if t in N.EXACT_TOLERANCES else N.DEFAULT_TOLERANCE
    metric = query.get("hm") if query.get("hm") in RF.HEATMAP_METRICS else "sparsity"
    return t, metric


def href(run_id: str) -> str:
    return f"/r/{run_id}"


def layout(run_id: str, query: dict):
    t, metric = view_state(query)
    return html.Div(className="run", children=[
        dcc.Store(id="rn-id", data=run_id),
        dcc.Store(id="rn-state", data=None),
        dcc.Interval(id="rn-tick", interval=1000, n_intervals=0),
        card(
            html.Div(className="card-head", children=[
                html.Div([html.H2(id="rn-title", children="Training run " + run_id, className="pair-title"),
                          html.Div(id="rn-meta", className="muted small")]),
                html.Div(className="head-actions", children=[
                    html.Span(id="rn-badge"),
                    html.Span(className="btn btn-ghost copy-btn", children=[
                        dcc.Clipboard(id="rn-copy", title="Copy a link to this exact view", className="clipboard"),
                        html.Span("Copy link", className="copy-label")]),
                ]),
            ]),
            html.Div(id="rn-progress", className="progress-block", style={"display": "none"}, children=[
                html.Div(className="progress", children=html.Div(id="rn-bar", className="progress-fill")),
                html.Div(id="rn-progress-text", className="progress-text"),
                dcc.Graph(id="rn-partial", config=GRAPH_CONFIG, figure=RF.empty("No checkpoint finished yet.")),
                html.Div(id="rn-checkpoints", className="table-scroll"),
            ]),
            html.Div(id="rn-error", style={"display": "none"}, children=[
                html.Div(id="rn-error-text"),
                html.Div(className="form-actions", children=[
                    html.Button("Retry", id="rn-retry", n_clicks=0, className="btn btn-primary"),
                    html.Span(id="rn-retry-msg", className="muted")]),
            ]),
        ),
        html.Div(id="rn-results", style={"display": "none"}, children=[
            card(className="controls", children=[
                html.Div(className="control-tol", children=[
                    html.Div("Tolerance of the sparsity curves", className="control-label"),
                    dcc.Dropdown(id="rn-tol", value=N.tol_key(t), clearable=False, className="dropdown",
                                 style={"maxWidth": "240px"},
                                 options=[{"label": N.fmt_tol(x), "value": N.tol_key(x)} for x in N.EXACT_TOLERANCES]),
                ]),
                html.Div(className="control-metric", children=[
                    html.Div("Heatmap", className="control-label"),
                    dcc.RadioItems(id="rn-hm", value=metric, inline=True, className="segmented",
                                   options=[{"label": v, "value": k} for k, v in RF.HEATMAP_METRICS.items()]),
                ]),
            ]),
            html.Div(id="rn-cards", className="stats"),
            html.Div(id="rn-warnings"),
            html.Div(className="two-col", children=[
                card(html.H3(id="rn-sparsity-title"), dcc.Graph(id="fig-run-sparsity", config=GRAPH_CONFIG),
                     className="col-wide"),
                card(html.H3("Consecutive updates (from the previous checkpoint)"), dcc.Graph(id="fig-run-consecutive", config=GRAPH_CONFIG),
                     className="col-narrow"),
            ]),
            card(html.H3("Ever-changed vs final subnetwork"),
                 html.P("E_i is every element changed at some checkpoint so far; I_i the elements changed at "
                        "checkpoint i; I_k the final subnetwork. All at the run's tolerance.", className="muted small"),
                 dcc.Graph(id="fig-run-ever", config=GRAPH_CONFIG)),
            card(html.H3(id="rn-heatmap-title"), dcc.Graph(id="fig-run-heatmap", config=GRAPH_CONFIG)),
            card(html.H3("Checkpoints"), html.Div(id="rn-table", className="table-scroll")),
            card(className="downloads", children=[
                html.Span("Download", className="control-label"),
                html.Button("Download report", id="rn-report", n_clicks=0, className="btn btn-ghost",
                            title="One HTML file with every figure; opens offline, no server needed"),
                dcc.Download(id="rn-report-file"),
                html.A("run JSON", id="rn-dl-json", href=f"/api/runs/{run_id}", download=f"subnetscope-run-{run_id}.json",
                       className="btn btn-ghost")]),
        ]),
    ])


# ---- pieces -----------------------------------------------------------------

def _meta(view: dict) -> str:
    req = view.get("request") or {}
    base = view.get("base") or {}
    parts = [f"base {req.get('base_name') + ' (first checkpoint)' if req.get('base_name') else req.get('base_label')}"]
    if base.get("sha"):
        parts[-1] += f" @ {base['sha'][:10]}"
    parts.append(f"{len(view.get('checkpoints') or [])} checkpoints")
    if req.get("revisions"):
        parts.append(f"revisions {req['revisions']}")
    parts.append(f"t = {N.fmt_tol(float(req.get('tolerance', 1e-5)))}")
    return " · ".join(parts)


def _title(view: dict) -> str:
    run = view.get("run") or {}
    return f"Training run {run.get('id') or view.get('request', {}).get('run') or view.get('id')}"


def _pct_done(a: dict) -> str:
    p = a.get("progress") or {}
    if a.get("status") == "done":
        return ""
    if p.get("bytes_total"):
        return f" {100 * (p.get('bytes_done') or 0) / p['bytes_total']:.0f} %"
    return ""


def _analysis_cell(a: dict, what: str):
    return html.Span([dcc.Link(what, href=a.get("url") or f"/a/{a.get('id')}"), " ",
                      badge(a.get("status")), html.Span(_pct_done(a), className="muted small")])


def checkpoints_table(view: dict):
    rows = []
    for c in view.get("checkpoints") or []:
        same = c["consecutive"]["id"] == c["analysis"]["id"]
        rows.append(html.Tr(**{"data-name": c["name"]}, children=[
            html.Td("" if c.get("step") is None else str(c["step"]), className="num"),
            html.Td(c["name"], className="mono"),
            html.Td((c.get("sha") or "")[:10], className="mono muted"),
            html.Td(_analysis_cell(c["analysis"], "vs base")),
            html.Td(html.Span("= vs base", className="muted") if same else _analysis_cell(c["consecutive"], "update")),
        ]))
    return html.Table(className="table compact", id="rn-progress-table", children=[
        html.Thead(html.Tr([html.Th("step", className="num"), html.Th("checkpoint"), html.Th("commit"),
                            html.Th("against the base"), html.Th("from the previous checkpoint")])),
        html.Tbody(rows)])


def progress_text(view: dict) -> list:
    p = view.get("progress") or {}
    if view.get("status") == "queued":
        return [html.B("Queued"), f" · {p.get('analyses_total', 0)} analyses waiting for a worker"]
    text = [html.B(f"{p.get('checkpoints_done', 0)} / {p.get('checkpoints_total', 0)} checkpoints"),
            f" · {p.get('analyses_done', 0)} of {p.get('analyses_total', 0)} analyses done"]
    if p.get("bytes_total"):
        text.append(f" · {N.fmt_bytes(p.get('bytes_done'))} of {N.fmt_bytes(p['bytes_total'])}")
    if view.get("phase") == "reduce":
        text.append(" · reducing the masks")
    return text


def progress_fraction(view: dict) -> float:
    p = view.get("progress") or {}
    if p.get("bytes_total"):
        return min(1.0, (p.get("bytes_done") or 0) / p["bytes_total"])
    return (p.get("analyses_done") or 0) / max(1, p.get("analyses_total") or 1)


def cards(result: dict, t: float):
    cps = result.get("checkpoints") or []
    last = cps[-1] if cps else {}
    key = N.tol_key(t)
    cons = [((c.get("consecutive") or {}).get("sparsity") or {}).get(key) for c in cps]
    cons = [x for x in cons if x is not None]
    return [
        stat(f"Final sparsity at t = {N.fmt_tol(t)}", html.Span(N.fmt_pct((last.get("sparsity") or {}).get(key)),
                                                               id="rn-stat-final"),
             f"{last.get('name', '')} against the base", className="stat-main"),
        stat(f"Mean consecutive sparsity at t = {N.fmt_tol(t)}",
             html.Span(N.fmt_pct(sum(cons) / len(cons)) if cons else "–", id="rn-stat-consecutive"),
             f"over {len(cons)} updates"),
        stat("Ever changed", html.Span(N.fmt_pct(last.get("ever_density")), id="rn-stat-ever"),
             f"{N.fmt_int(last.get('ever_changed'))} of {N.fmt_int(result.get('numel'))} elements at "
             f"t = {N.fmt_tol(result.get('tolerance', 1e-5))}"),
        stat("Ever changed, outside the final subnetwork", html.Span(N.fmt_pct(last.get("outside_share")),
                                                                     id="rn-stat-outside"),
             f"{N.fmt_int(last.get('ever_outside'))} elements changed, then back within t of the base"),
    ]


def results_table(result: dict, t: float):
    key = N.tol_key(t)
    head = ["step", "checkpoint", f"sparsity @ {N.fmt_tol(t)}", f"consecutive @ {N.fmt_tol(t)}", "ever-changed",
            "outside I_i", "o1 final", "o2 final", "random o1", "analyses"]
    rows = []
    for c in result.get("checkpoints") or []:
        cons = ((c.get("consecutive") or {}).get("sparsity") or {}).get(key)
        links = [dcc.Link("vs base", href=f"/a/{c.get('analysis')}")] if c.get("analysis") else []
        if c.get("consecutive_analysis") and c.get("consecutive_analysis") != c.get("analysis"):
            links += [" · ", dcc.Link("update", href=f"/a/{c['consecutive_analysis']}")]
        rows.append(html.Tr(**{"data-name": c["name"]}, children=[
            html.Td("" if c.get("step") is None else str(c["step"]), className="num"),
            html.Td(c["name"], className="mono"),
            html.Td(N.fmt_pct((c.get("sparsity") or {}).get(key)), className="num"),
            html.Td(N.fmt_pct(cons), className="num"),
            html.Td(N.fmt_pct(c.get("ever_density")), className="num"),
            html.Td(N.fmt_pct(c.get("outside_share")), className="num"),
            html.Td(N.fmt_pct(c.get("o1")), className="num"),
            html.Td(N.fmt_pct(c.get("o2")), className="num"),
            html.Td(N.fmt_pct(c.get("random_o1")), className="num muted"),
            html.Td(links),
        ]))
    return html.Table(className="table compact", id="rn-results-table", children=[
        html.Thead(html.Tr([html.Th(h, className="" if i in (1, 9) else "num") for i, h in enumerate(head)])),
        html.Tbody(rows)])


def figures(result: dict, t: float, metric: str) -> tuple:
    return (RF.sparsity_vs_step(result, t), RF.consecutive_vs_step(result, t), RF.ever_vs_final(result),
            RF.layer_step_heatmap(result, t, metric))


async def _fetch(api, run_id: str) -> dict:
    if run_id in _DONE:
        return _DONE[run_id]
    view = await api.request("GET", f"/api/runs/{run_id}")
    if view.get("status") == "done" and view.get("result"):
        _DONE[run_id] = view
        while len(_DONE) > 8:
            _DONE.popitem(last=False)
    return view


# ---- callbacks ----------------------------------------------------------------

def register(app, api):
    app.clientside_callback(
        "function(path, search) { return window.location.origin + path + (search || ''); }",
        Output("rn-copy", "content"), Input("url", "pathname"), Input("url", "search"))

    @app.callback(
        Output("rn-state", "data"), Output("rn-title", "children"), Output("rn-meta", "children"),
        Output("rn-badge", "children"), Output("rn-progress", "style"), Output("rn-bar", "style"),
        Output("rn-progress-text", "children"), Output("rn-partial", "figure"), Output("rn-checkpoints", "children"),
        Output("rn-error", "style"), Output("rn-error-text", "children"), Output("rn-results", "style"),
        Output("rn-tick", "disabled"),
        Input("rn-tick", "n_intervals"), State("rn-id", "data"), State("rn-state", "data"),
    )
    async def poll(_n, run_id, state):
        hide, show = {"display": "none"}, {"display": "block"}
        try:
            view = await _fetch(api, run_id)
        except ApiError as err:
            return (no_update, "Training run " + run_id, "", badge("unavailable"), hide, no_update, no_update,
                    no_update, no_update, show, notice(message(err).replace("analysis or overlap", "run"), "error"),
                    hide, err.status == 404)
        status = view.get("status")
        new_state = {"status": status}
        state_out = no_update if state == new_state else new_state
        head = (state_out, _title(view), _meta(view), badge(status))
        if status == "done":
            return (*head, hide, no_update, no_update, no_update, no_update, hide, None, show, True)
        error = None
        if status in ("failed", "stalled"):
            err = view.get("error") or {}
            text = err.get("message") or ("A worker running one of its analyses stopped reporting; it resumes "
                                          "when a worker picks it up again.")
            error = notice([html.B(f"This run {status}"), html.Br(), text], "error", id="rn-error-notice")
        fig = await asyncio.to_thread(RF.partial_sparsity, view)
        return (*head, show, {"width": f"{100 * progress_fraction(view):.1f}%"}, progress_text(view), fig,
                checkpoints_table(view), show if error else hide, error, hide, status == "failed")

    @app.callback(
        Output("rn-cards", "children"), Output("rn-warnings", "children"), Output("rn-sparsity-title", "children"),
        Output("rn-heatmap-title", "children"), *(Output(g, "figure") for g in GRAPHS),
        Output("rn-table", "children"), Output("url", "search", allow_duplicate=True),
        Input("rn-state", "data"), Input("rn-tol", "value"), Input("rn-hm", "value"),
        State("rn-id", "data"), State("url", "search"),
        prevent_initial_call=True,
    )
    async def render(state, tol, metric, run_id, search):
        if not state or state.get("status") != "done":
            raise PreventUpdate
        t = N.parse_tolerance(tol)
        view = await _fetch(api, run_id)
        result = view.get("result") or {}
        figs = await asyncio.to_thread(figures, result, t, metric)
        warnings = result.get("warnings") or []
        new_search = f"?t={N.fmt_tol(t)}&hm={metric}"
        return (cards(result, t),
                notice(html.Ul([html.Li(w) for w in warnings]), "warn") if warnings else None,
                f"Sparsity vs step at t = {N.fmt_tol(t)}",
                f"Layers × steps: {RF.HEATMAP_METRICS[metric]}" + (f" at t = {N.fmt_tol(t)}" if metric in
                                                                   ("sparsity", "consecutive") else ""),
                *figs, results_table(result, t), no_update if search == new_search else new_search)

    def _open(click):
        point = ((click or {}).get("points") or [{}])[0]
        aid = point.get("customdata")
        if not aid or not isinstance(aid, str):
            raise PreventUpdate
        return f"/a/{aid}", ""

    for graph in (*GRAPHS, "rn-partial"):
        app.callback(Output("url", "pathname", allow_duplicate=True), Output("url", "search", allow_duplicate=True),
                     Input(graph, "clickData"), prevent_initial_call=True)(_open)

    @app.callback(Output("rn-retry-msg", "children"), Output("rn-tick", "disabled", allow_duplicate=True),
                  Input("rn-retry", "n_clicks"), State("rn-id", "data"), State("api-token", "data"),
                  prevent_initial_call=True)
    async def retry(n, run_id, api_token):
        if not n:
            raise PreventUpdate
        try:
            await api.request("POST", f"/api/runs/{run_id}/retry", token=api_token)
        except Exception as err:  # noqa: BLE001 - shown to the user
            return message(err), no_update
        return "Resubmitted; finished analyses are reused.", False

    @app.callback(Output("rn-report-file", "data"), Input("rn-report", "n_clicks"), State("rn-id", "data"),
                  State("rn-tol", "value"), State("rn-hm", "value"), prevent_initial_call=True)
    async def download_report(n, run_id, tol, metric):
        if not n:
            raise PreventUpdate
        view = await _fetch(api, run_id)
        page = await asyncio.to_thread(R.run_report, view.get("result") or {}, N.parse_tolerance(tol), metric,
                                       title=_title(view))
        return {"content": page, "filename": f"subnetscope-run-{run_id}.html", "type": "text/html"}
