"""/lineage: which candidate is a checkpoint's parent? /l/<id> shows a request's ranking."""

from __future__ import annotations

from urllib.parse import quote

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from ..apiclient import ApiError, message
from .shell import card

DEMO = ("local:demo/rl_a", "local:demo/base\nlocal:demo/sft\nlocal:demo/rl_b")


def layout(query: dict, job_id: str | None = None):
    return html.Div([
        dcc.Store(id="lg-job", data=job_id),
        dcc.Interval(id="lg-tick", interval=700, disabled=not job_id),
        card(
            html.H2("Which base is this from?"),
            html.P("Candidates are ranked by the share of sampled matrix elements that are bit-identical to the "
                   "checkpoint (random blocks read by range: about 1.5 % of each candidate's bytes), with 95 % "
                   "intervals widened for the block sampling (docs/METRICS.md).", className="muted"),
            html.Div(className="form-grid", children=[
                html.Label(className="field", children=[
                    html.Span("Checkpoint (org/name[@rev] or local:dir)", className="field-label"),
                    dcc.Input(id="lg-tuned", type="text", className="input", value=query.get("tuned") or DEMO[0])]),
                html.Label(className="field field-wide", children=[
                    html.Span("Candidates, one per line", className="field-label"),
                    dcc.Textarea(id="lg-cands", className="input", value=query.get("candidates") or DEMO[1],
                                 style={"height": "6em"})]),
            ]),
            html.Div(className="form-actions", children=[
                html.Button("Rank candidates", id="lg-go", n_clicks=0, className="btn btn-primary"),
                html.Div(id="lg-msg", className="form-msg"),
            ]),
        ),
        html.Div(id="lg-result"),
    ])


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def ranking(body: dict):
    """The ranking table and verdict of a finished request (a pure function of the API body)."""
    result = body.get("result") or {}
    rows = result.get("candidates") or []
    target = (result.get("target") or {}).get("label") or (body.get("request") or {}).get("tuned", "")
    table = html.Table(className="table", id="lg-table", children=[
        html.Thead(html.Tr([html.Th(h) for h in ("#", "candidate", "identical", "95 % interval", "sampled",
                                                  "read", "not compared", "")])),
        html.Tbody([html.Tr([
            html.Td(str(i)), html.Td(r.get("label") or r["candidate"]["id"]), html.Td(_pct(r["s"])),
            html.Td(f"{_pct(r['low'])} – {_pct(r['high'])}"), html.Td(f"{r['sampled']:,}"),
            html.Td(_pct(r.get("read_share"))),
            html.Td(", ".join(m["name"] for m in r["mismatched"][:3]) + (" …" if len(r["mismatched"]) > 3 else "")
                    if r["mismatched"] else "–"),
            html.Td(html.A("exact analysis", href=f"/?base={quote(r.get('label') or r['candidate']['id'])}"
                                                  f"&tuned={quote(target)}")),
        ]) for i, r in enumerate(rows, 1)]),
    ])
    verdict = ""
    if rows:
        first = rows[0].get("label") or rows[0]["candidate"]["id"]
        verdict = (f"Most likely parent: {first}; its interval lies above every other's." if result.get("separated")
                   else f"{first} ranks first, but its interval overlaps the next one's.")
    return card(html.H3(f"Candidates for {target}"), html.P(verdict, id="lg-verdict"), table)


def register(app, api):
    @app.callback(Output("url", "pathname", allow_duplicate=True), Output("lg-msg", "children"),
                  Input("lg-go", "n_clicks"), State("lg-tuned", "value"), State("lg-cands", "value"),
                  State("api-token", "data"), prevent_initial_call=True)
    async def submit(n, tuned, cands, api_token):
        if not n:
            raise PreventUpdate
        candidates = [c.strip() for c in (cands or "").splitlines() if c.strip()]
        try:
            body = await api.request("POST", "/api/lineage", token=api_token,
                                     json={"tuned": (tuned or "").strip(), "candidates": candidates})
        except Exception as err:  # noqa: BLE001 - shown to the user
            return no_update, message(err)
        return body["url"], ""

    @app.callback(Output("lg-result", "children"), Output("lg-tick", "disabled", allow_duplicate=True),
                  Input("lg-tick", "n_intervals"), State("lg-job", "data"), prevent_initial_call="initial_duplicate")
    async def poll(_n, job_id):
        if not job_id:
            raise PreventUpdate
        try:
            body = await api.request("GET", f"/api/lineage/{job_id}")
        except ApiError as err:
            return card(html.P(message(err))), err.status == 404
        if body["status"] == "done":
            return ranking(body), True
        if body["status"] == "failed":
            return card(html.P(f"Failed: {(body.get('error') or {}).get('message', '')}", id="lg-error")), True
        return card(html.P(f"{body['status']}…", className="muted")), False
