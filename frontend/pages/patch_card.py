"""The analysis page's patch card: the size estimate, "Export patch", progress and the download."""

from __future__ import annotations

from dash import Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from ..apiclient import ApiError, message
from .shell import card


def estimate_text(result: dict) -> str:
    """'A lossless patch of this update: about X MB, Y % of the checkpoint.' from result["patch"]."""
    p = (result or {}).get("patch") or {}
    if p.get("bytes") is None or p.get("share") is None:
        return "No patch estimate in this result."
    return (f"A lossless patch of this update: about {p['bytes'] / 1e6:,.1f} MB, "
            f"{100 * p['share']:.1f} % of the checkpoint.")


def state_text(state: dict | None) -> str:
    if not state or not state.get("status"):
        return ""
    if state["status"] == "done":
        return f"Ready: {state['bytes'] / 1e6:,.1f} MB ({100 * (state.get('share') or 0):.2f} %)."
    if state["status"] == "failed":
        return f"Export failed: {(state.get('error') or {}).get('message', 'unknown error')}"
    return f"Exporting… {100 * (state.get('progress') or 0):.0f} %"


def layout(analysis_id: str):
    return card(className="patch-card", children=[
        html.Span("Patch", className="control-label"),
        html.Span(id="pc-estimate", className="muted"),
        html.Button("Export patch", id="pc-export", className="btn btn-ghost", n_clicks=0),
        html.Span(id="pc-state"),
        html.A("Download patch", id="pc-download", href=f"/api/analyses/{analysis_id}/patch/file",
               download=f"subnetscope-{analysis_id}.patch.safetensors", className="btn",
               style={"display": "none"}),
        html.Span(["apply with ", html.Code("subnetscope patch apply BASE FILE -o DIR")], className="muted"),
        dcc.Interval(id="pc-tick", interval=1000, disabled=True),
    ])


def register(app, api):
    @app.callback(Output("pc-estimate", "children"), Input("an-state", "data"), State("an-id", "data"))
    async def estimate(state, analysis_id):
        if not state or state.get("status") != "done":
            raise PreventUpdate
        return estimate_text((await api.analysis(analysis_id)).get("result") or {})

    @app.callback(
        Output("pc-state", "children"), Output("pc-download", "style"), Output("pc-tick", "disabled"),
        Input("pc-export", "n_clicks"), Input("pc-tick", "n_intervals"),
        State("an-id", "data"), State("api-token", "data"), prevent_initial_call=True,
    )
    async def export(clicks, _tick, analysis_id, api_token):
        if not clicks:
            raise PreventUpdate
        try:
            if ctx.triggered_id == "pc-export":
                state = await api.request("POST", f"/api/analyses/{analysis_id}/patch", token=api_token)
            else:
                state = await api.request("GET", f"/api/analyses/{analysis_id}/patch")
        except ApiError as err:
            return message(err), no_update, True
        finished = state.get("status") in ("done", "failed")
        shown = {"display": "inline-block"} if state.get("status") == "done" else {"display": "none"}
        return state_text(state), shown, finished
