"""Overlap: do two or three finetuning runs of one base change the same elements?"""

from __future__ import annotations

from dash import ALL, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import numbers as N
from .. import report as R
from .. import summary as S
from ..apiclient import message
from ..figures import overlap as F
from .picker import fetch_many, options, parse_ids, short_label
from .shell import card, notice

GRAPH_CONFIG = {"displaylogo": False}
# Demo suggestions: (label, base, finetuned...). A click computes (or reuses) the analyses at
# t = 1e-5, waits for them, then the overlap. The trained finals (an SFT and an RL run of one
# pretrained base, worker/demo/trained.py) once GET /api/demo says the family exists.
DEMO_SUGGESTIONS = (
    ("demo · rl_a & rl_b", "local:demo/base", ("local:demo/rl_a", "local:demo/rl_b")),
    ("demo · sft & rl_a & rl_b", "local:demo/base", ("local:demo/sft", "local:demo/rl_a", "local:demo/rl_b")),
)
TRAINED_SUGGESTIONS = (
    ("trained · SFT & RL", "local:demo/trained/base", ("local:demo/trained/sft", "local:demo/trained/rl")),
)
SUGGESTIONS = DEMO_SUGGESTIONS + TRAINED_SUGGESTIONS


def layout(query: dict, overlap_id: str | None = None):
    """/overlap?ids=a,b[,c] computes (or reuses) that overlap; /o/<id> shows a stored one."""
    ids = parse_ids(query.get("ids"))[:3]
    return html.Div([
        dcc.Store(id="ov-auto", data=ids if len(ids) >= 2 and not overlap_id else None),
        dcc.Store(id="ov-job", data={"id": overlap_id, "ids": ids} if overlap_id else None),
        dcc.Interval(id="ov-tick", interval=700, disabled=not overlap_id),
        card(
            html.H2("Subnetwork overlap"),
            html.P("Pick two or three finished analyses of the same base (same commit, same "
                   "tolerance). The changed sets are intersected element by element.", className="muted"),
            html.Div(className="form-grid", children=[
                html.Label(className="field field-wide", children=[
                    html.Span("Finished analyses (2 or 3)", className="field-label"),
                    dcc.Dropdown(id="ov-ids", multi=True, value=ids, className="dropdown",
                                 options=[{"label": i, "value": i} for i in ids],
                                 placeholder="Pick analyses…")]),
                html.Label(className="field", children=[
                    html.Span("…or paste ids / permalinks (Enter)", className="field-label"),
                    dcc.Input(id="ov-paste", type="text", className="input")]),
            ]),
            html.Div(className="form-actions", children=[
                html.Button("Compute overlap", id="ov-go", n_clicks=0, className="btn btn-primary"),
                html.Div(id="ov-msg", className="form-msg"),
            ]),
            html.Div(className="examples", children=[
                html.Div("Demo suggestions (their analyses are computed first, then the overlap)",
                         className="examples-label"),
                html.Div(id="ov-suggest", className="chips", children=suggestion_chips(False)),
            ]),
            dcc.Store(id="ov-wait", data=None),
            dcc.Interval(id="ov-wait-tick", interval=700, disabled=True),
            dcc.Interval(id="ov-demo-tick", interval=4000, n_intervals=0),
        ),
        html.Div(id="ov-result"),
    ])


def suggestion_chips(trained: bool):
    shown = SUGGESTIONS if trained else DEMO_SUGGESTIONS
    return [html.Button(label, id={"type": "ov-suggest", "index": i}, n_clicks=0, className="chip chip-demo",
                        title=f"{base} → " + ", ".join(tuned))
            for i, (label, base, tuned) in enumerate(shown)]


def _pct(v):
    return "–" if v is None else f"{100 * v:.2f} %"


def numbers_block(ov: dict):
    three = len(ov.get("labels") or []) >= 3
    letters = "ABC" if three else "AB"
    sizes = [ov.get(f"{l.lower()}_changed") for l in letters]
    n = ov.get("numel")
    rows = [html.Tr([html.Td("elements compared (n)"), html.Td(N.fmt_int(n), className="num")])]
    for l, lab, s in zip(letters, ov.get("labels") or [], sizes):
        rows.append(html.Tr([html.Td([html.B(l), f" {lab}: changed"]),
                             html.Td(f"{N.fmt_int(s)}  ({_pct(s / n if n and s is not None else None)})",
                                     className="num")]))
    pairs = ov.get("pairs") or {}
    blocks = [("A & B", ov)] if not three else [
        (f"{a} & {b}", pairs.get(k) or {}) for k, (a, b) in (("ab", "AB"), ("ac", "AC"), ("bc", "BC"))]
    for name, p in blocks:
        rows += [
            html.Tr(className="group", children=[html.Td(html.B(name)), html.Td("")]),
            html.Tr([html.Td("both changed"), html.Td(N.fmt_int(p.get("both")), className="num")]),
            html.Tr([html.Td(f"o1 = |{name[0]}∩{name[-1]}| / |{name[0]}|  (random)"),
                     html.Td(f"{_pct(p.get('o1'))}  ({_pct(p.get('random_o1'))})", className="num")]),
            html.Tr([html.Td(f"o2 = |{name[0]}∩{name[-1]}| / |{name[-1]}|  (random)"),
                     html.Td(f"{_pct(p.get('o2'))}  ({_pct(p.get('random_o2'))})", className="num")]),
            html.Tr([html.Td("Jaccard"), html.Td(_pct(p.get("jaccard")), className="num")]),
        ]
    if three:
        rows.append(html.Tr(className="group", children=[html.Td(html.B("Venn regions")), html.Td("")]))
        for key, count in sorted((ov.get("venn") or {}).items(), key=lambda kv: (-kv[0].count("1"), kv[0])):
            name = " & ".join(l for l, bit in zip(letters, key) if bit == "1")
            rows.append(html.Tr([html.Td(f"only {name}" if key.count("1") == 1 else name),
                                 html.Td(N.fmt_int(count), className="num")]))
    return html.Table(className="table compact", id="overlap-numbers", children=html.Tbody(rows))


def render(ov: dict):
    tol = ov.get("tolerance")
    head = f"At t = {N.fmt_tol(tol)}" if tol is not None else ""
    layers_src = ov if ov.get("layers") else ((ov.get("pairs") or {}).get("ab") or {})
    return [
        dcc.Store(id="ov-data", data=ov),
        card(html.P(S.overlap_summary(ov), id="ov-summary", className="plain-summary"),
             html.Div(className="downloads", children=[
                 html.Button("Download report", id="ov-report", n_clicks=0, className="btn btn-ghost",
                             title="One HTML file with every figure; opens offline, no server needed"),
                 dcc.Download(id="ov-report-file"),
             ])),
        html.Div(className="two-col", children=[
            card(html.H3(f"Changed sets (areas to scale). {head}"),
                 dcc.Graph(id="fig-venn", figure=F.venn(ov), config=GRAPH_CONFIG), className="col-wide"),
            card(html.H3("Overlap numbers"), numbers_block(ov), className="col-narrow"),
        ]),
        card(html.H3("Overlap against the random baseline (A vs B)"),
             dcc.Graph(id="fig-overlap-bars", figure=F.overlap_bars(ov if ov.get("o1") is not None
                                                                   else {**layers_src, "labels": ov.get("labels")}),
                       config=GRAPH_CONFIG)),
        card(html.H3("Per layer (A vs B)"),
             dcc.Graph(id="fig-overlap-layers", figure=F.overlap_layer_heatmap(layers_src), config=GRAPH_CONFIG)),
    ]


def _unwrap(resp: dict) -> tuple[str, dict | None, str | None]:
    """(status, overlap, error) from GET /api/overlaps/{id}, whichever envelope it uses."""
    if resp.get("schema") and resp.get("labels") is not None:
        return "done", resp, None
    status = resp.get("status") or ("done" if resp.get("result") else "running")
    err = resp.get("error")
    if isinstance(err, dict):
        err = err.get("message") or err.get("code")
    return status, resp.get("result"), err


def register(app, api):
    @app.callback(Output("ov-ids", "value", allow_duplicate=True), Output("ov-paste", "value"),
                  Input("ov-paste", "n_submit"), State("ov-paste", "value"), State("ov-ids", "value"),
                  prevent_initial_call=True)
    def paste(_n, text, current):
        merged = list(current or []) + [i for i in parse_ids(text) if i not in (current or [])]
        return merged[:3], ""

    @app.callback(Output("ov-ids", "options"), Input("ov-ids", "value"))
    async def load_options(ids):
        try:
            return await options(api, list(ids or []), same_base=True)
        except Exception:  # noqa: BLE001 - the health banner explains outages
            return []

    @app.callback(Output("ov-suggest", "children"), Output("ov-demo-tick", "disabled"),
                  Input("ov-demo-tick", "n_intervals"))
    async def load_suggestions(_n):
        try:
            ready = (await api.request("GET", "/api/demo"))["trained"]["state"] == "ready"
        except Exception:  # noqa: BLE001 - the synthetic suggestions stay; the banner explains outages
            return no_update, no_update
        if not ready:
            raise PreventUpdate
        return suggestion_chips(True), True

    @app.callback(
        Output("ov-ids", "value", allow_duplicate=True), Output("ov-ids", "options", allow_duplicate=True),
        Output("ov-wait", "data"), Output("ov-wait-tick", "disabled"), Output("ov-msg", "children", allow_duplicate=True),
        Input({"type": "ov-suggest", "index": ALL}, "n_clicks"), State("api-token", "data"),
        prevent_initial_call=True,
    )
    async def suggest(_clicks, api_token):
        # The chips (re)appearing fire this too, with n_clicks 0.
        if not ctx.triggered_id or not any(t.get("value") for t in ctx.triggered):
            raise PreventUpdate
        _, base, tuned = SUGGESTIONS[ctx.triggered_id["index"]]
        ids = []
        try:
            for t in tuned:
                resp = await api.request("POST", "/api/analyses", json={"base": base, "tuned": t}, token=api_token)
                ids.append(resp["id"])
            # with their options: the dropdown drops a value that none of its options has
            opts = await options(api, ids, same_base=True)
        except Exception as err:  # noqa: BLE001 - shown to the user
            return no_update, no_update, None, True, notice(message(err), "error")
        return ids, opts, ids, False, html.Span("Computing the analyses…", className="muted", id="ov-waiting")

    @app.callback(
        Output("ov-auto", "data"), Output("ov-wait-tick", "disabled", allow_duplicate=True),
        Output("ov-msg", "children", allow_duplicate=True),
        Input("ov-wait-tick", "n_intervals"), State("ov-wait", "data"),
        prevent_initial_call=True,
    )
    async def wait_analyses(_n, ids):
        """The suggestion's analyses done: submit the overlap (ov-auto); one failed: say so."""
        if not ids:
            raise PreventUpdate
        try:
            bodies = [await api.request("GET", f"/api/analyses/{aid}") for aid in ids]
        except Exception as err:  # noqa: BLE001
            return no_update, True, notice(message(err), "error")
        bad = next((b for b in bodies if b.get("status") == "failed"), None)  # a stalled one resumes
        if bad is not None:
            reason = (bad.get("error") or {}).get("message") or bad.get("status")
            return no_update, True, notice(f"The analysis {bad['id']} failed: {reason}", "error")
        if not all(b.get("status") == "done" for b in bodies):
            raise PreventUpdate
        return list(ids), True, ""

    @app.callback(
        Output("ov-job", "data"), Output("ov-tick", "disabled"), Output("ov-msg", "children"),
        Output("url", "search", allow_duplicate=True),
        Input("ov-go", "n_clicks"), Input("ov-auto", "data"), State("ov-ids", "value"), State("api-token", "data"),
        prevent_initial_call="initial_duplicate",
    )
    async def submit(n, auto, ids, api_token):
        ids = list(ids or [])
        if not n and not auto:
            raise PreventUpdate
        if not 2 <= len(ids) <= 3:
            return no_update, True, notice("Pick two or three analyses.", "error"), no_update
        try:
            resp = await api.request("POST", "/api/overlaps", json={"analyses": ids}, token=api_token)
        except Exception as err:  # noqa: BLE001 - shown to the user
            return no_update, True, notice(message(err), "error"), no_update
        return {"id": resp["id"], "ids": ids}, False, html.Span("Computing…", className="muted"), \
            f"?ids={','.join(ids)}"

    @app.callback(
        Output("ov-result", "children"), Output("ov-tick", "disabled", allow_duplicate=True),
        Output("ov-msg", "children", allow_duplicate=True), Output("ov-ids", "value", allow_duplicate=True),
        Input("ov-tick", "n_intervals"), State("ov-job", "data"), State("ov-ids", "value"),
        prevent_initial_call=True,
    )
    async def poll(_n, job, selected):
        if not job:
            raise PreventUpdate
        try:
            resp = await api.request("GET", f"/api/overlaps/{job['id']}")
        except Exception as err:  # noqa: BLE001
            return no_update, True, notice(message(err), "error"), no_update
        status, ov, err = _unwrap(resp)
        if status in ("failed", "stalled") or err:
            return None, True, notice(f"The overlap {status}: {err or 'no reason given'}", "error"), no_update
        if status != "done" or not ov:
            raise PreventUpdate
        # the engine labels sets with analysis ids; the pair's finetuned name reads better
        ids = list(resp.get("analyses") or job.get("ids") or [])
        labels = list(ov.get("labels") or ids)
        analyses = await fetch_many(api, ids)
        named = {aid: short_label(a) for aid, a in zip(ids, analyses) if isinstance(a, dict)}
        if not any(l in named for l in labels) and len(labels) == len(ids):
            labels = ids  # positional labels ("a", "b"): name them by analysis
        ov = {**ov, "labels": [named.get(l, l) for l in labels]}
        # a stored overlap opened at /o/<id> shows which analyses it is made of
        return render(ov), True, "", no_update if selected else ids

    @app.callback(Output("ov-report-file", "data"), Input("ov-report", "n_clicks"), State("ov-data", "data"),
                  prevent_initial_call=True)
    def download_report(n, ov):
        if not n or not ov:
            raise PreventUpdate
        return {"content": R.overlap_report(ov), "filename": "subnetscope-overlap.html", "type": "text/html"}
