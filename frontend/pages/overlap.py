"""Overlap: do two or three finetuning runs of one base change the same elements?"""

from __future__ import annotations

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import figures as F
from .. import numbers as N
from ..apiclient import message
from .picker import fetch_many, options, parse_ids, short_label
from .shell import card, notice

GRAPH_CONFIG = {"displaylogo": False}


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
        ),
        html.Div(id="ov-result"),
    ])


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

    @app.callback(
        Output("ov-job", "data"), Output("ov-tick", "disabled"), Output("ov-msg", "children"),
        Output("url", "search", allow_duplicate=True),
        Input("ov-go", "n_clicks"), Input("ov-auto", "data"), State("ov-ids", "value"),
        prevent_initial_call="initial_duplicate",
    )
    async def submit(n, auto, ids):
        ids = list(ids or [])
        if not n and not auto:
            raise PreventUpdate
        if not 2 <= len(ids) <= 3:
            return no_update, True, notice("Pick two or three analyses.", "error"), no_update
        try:
            resp = await api.request("POST", "/api/overlaps", json={"analyses": ids})
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
