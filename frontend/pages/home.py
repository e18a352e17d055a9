"""Home: submit a base/finetuned pair, fill it from examples, list recent analyses."""

from __future__ import annotations

import datetime as dt

from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from .. import numbers as N
from ..apiclient import ApiError, message
from .picker import label
from .shell import badge, card, notice

# The study's pairs (../shared/design/metrics.md, reference table).
STUDY_PAIRS = (
    ("allenai/Llama-3.1-Tulu-3-8B-SFT", "allenai/Llama-3.1-Tulu-3-8B-DPO", "Tulu 3 8B · DPO"),
    ("allenai/Llama-3.1-Tulu-3-70B-SFT", "allenai/Llama-3.1-Tulu-3-70B-DPO", "Tulu 3 70B · DPO"),
    ("deepseek-ai/deepseek-math-7b-instruct", "deepseek-ai/deepseek-math-7b-rl", "DeepSeek-Math 7B · GRPO"),
    ("mistralai/Mistral-7B-v0.1", "kaist-ai/mistral-orpo-beta", "Mistral 7B · ORPO"),
    ("openbmb/Eurus-7b-sft", "openbmb/Eurus-7b-kto", "Eurus 7B · KTO"),
    ("peiyi9979/mistral-7b-sft", "peiyi9979/math-shepherd-mistral-7b-rl", "Math-Shepherd · PPO"),
    ("PRIME-RL/Eurus-2-7B-SFT", "PRIME-RL/Eurus-2-7B-PRIME", "Eurus-2 7B · PRIME"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "princeton-nlp/Llama-3-Instruct-8B-SimPO", "Llama 3 8B · SimPO"),
)
DEMO_PAIRS = tuple(("local:demo/base", f"local:demo/{name}", f"demo · {name}")
                   for name in ("sft", "rl_a", "rl_b", "resized"))
EXAMPLES = STUDY_PAIRS + DEMO_PAIRS


def layout(query: dict):
    tol_options = [{"label": N.fmt_tol(t) + (" (default)" if t == N.DEFAULT_TOLERANCE else ""),
                    "value": t} for t in N.EXACT_TOLERANCES if t > 0]
    form = card(
        html.H2("Analyze a finetuning run"),
        html.P("Compare a finetuned checkpoint with its base, tensor by tensor: which elements "
               "changed, where, and by how many representable steps.", className="muted"),
        html.Div(className="form-grid", children=[
            _field("Base model", dcc.Input(id="f-base", type="text", placeholder="org/name or local:dir",
                                           debounce=False, className="input", value=query.get("base", ""))),
            _field("Base revision", dcc.Input(id="f-base-rev", type="text", placeholder="main",
                                              className="input")),
            _field("Finetuned model", dcc.Input(id="f-tuned", type="text", placeholder="org/name or local:dir",
                                                className="input", value=query.get("tuned", ""))),
            _field("Finetuned revision", dcc.Input(id="f-tuned-rev", type="text", placeholder="main",
                                                   className="input")),
            _field("Tolerance t (changed iff |Δ| > t)",
                   dcc.Dropdown(id="f-tol", options=tol_options, value=N.DEFAULT_TOLERANCE,
                                clearable=False, className="dropdown")),
            _field("Update rank", dcc.RadioItems(
                id="f-rank", value="off", inline=True, className="radios",
                options=[{"label": " off", "value": "off"}, {"label": " sampled", "value": "sampled"},
                         {"label": " all", "value": "all"}])),
            _field("Hub token (optional; used once, never stored or shown)",
                   dcc.Input(id="f-token", type="password", autoComplete="off", className="input",
                             placeholder="hf_…", persistence=False)),
        ]),
        html.Div(className="form-actions", children=[
            html.Button("Analyze", id="f-submit", n_clicks=0, className="btn btn-primary"),
            html.Div(id="f-msg", className="form-msg"),
        ]),
        html.Div(className="examples", children=[
            html.Div("Pairs from the study", className="examples-label"),
            html.Div(className="chips", children=[
                html.Button(label, id={"type": "example", "index": i}, n_clicks=0, className="chip",
                            title=f"{base} → {tuned}")
                for i, (base, tuned, label) in enumerate(STUDY_PAIRS)]),
            html.Div("Demo family (small local checkpoints)", className="examples-label"),
            html.Div(className="chips", children=[
                html.Button(label, id={"type": "example", "index": len(STUDY_PAIRS) + i}, n_clicks=0,
                            className="chip chip-demo", title=f"{base} → {tuned}")
                for i, (base, tuned, label) in enumerate(DEMO_PAIRS)]),
        ]),
    )
    recent = card(
        html.Div(className="card-head", children=[
            html.H2("Recent analyses"),
            html.Span("sparsity at t = 1e-5", className="muted small"),
        ]),
        html.Div(id="recent-table", children=html.Div("Loading…", className="muted")),
        dcc.Interval(id="home-tick", interval=4000, n_intervals=0),
    )
    return html.Div([form, recent])


def _field(label, control):
    return html.Label(className="field", children=[html.Span(label, className="field-label"), control])


def _when(value) -> str:
    if value is None:
        return ""
    try:
        if isinstance(value, (int, float)):
            d = dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
        else:
            d = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return d.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, OSError):
        return str(value)


def _sparsity(item: dict) -> tuple[float | None, float | None]:
    """(sparsity, its tolerance) of a list item: the summary holds the analysis's own t."""
    summary = item.get("summary") or {}
    s = summary.get("sparsity")
    if isinstance(s, dict):  # a full result summary: exact counts at every study tolerance
        return s.get("1e-05"), 1e-05
    t = summary.get("tolerance", item.get("tolerance"))
    try:
        t = float(t) if t is not None else None
    except (TypeError, ValueError):
        t = None
    return s, t


def _sparsity_cell(item: dict):
    s, t = _sparsity(item)
    if s is None:
        return "–"
    if t is None or N.snap(t) == 1e-05:
        return N.fmt_pct(s)
    return [N.fmt_pct(s), html.Span(f" at t = {N.fmt_tol(t)}", className="muted small")]


def recent_table(items: list[dict]):
    if not items:
        return html.Div("No analyses yet. Submit a pair above, or try a demo pair.", className="muted")
    rows = []
    for item in items:
        aid = item.get("id", "")
        rows.append(html.Tr([
            html.Td(dcc.Link(label(item), href=f"/a/{aid}", className="pair-link")),
            html.Td(badge(item.get("status"))),
            html.Td(_sparsity_cell(item), className="num"),
            html.Td(_when(item.get("created_at")), className="muted small"),
        ], **{"data-id": aid}))
    return html.Table(className="table", id="recent", children=[
        html.Thead(html.Tr([html.Th("Pair"), html.Th("Status"), html.Th("Sparsity", className="num"),
                            html.Th("Submitted")])),
        html.Tbody(rows),
    ])


def register(app, api):
    @app.callback(Output("f-base", "value"), Output("f-tuned", "value"),
                  Input({"type": "example", "index": ALL}, "n_clicks"), prevent_initial_call=True)
    def fill_example(clicks):
        if not ctx.triggered_id or not any(clicks or []):
            return no_update, no_update
        base, tuned, _ = EXAMPLES[ctx.triggered_id["index"]]
        return base, tuned

    @app.callback(Output("recent-table", "children"), Input("home-tick", "n_intervals"))
    async def load_recent(_n):
        try:
            return recent_table(await api.recent(limit=25))
        except Exception as err:  # noqa: BLE001 - shown on the page
            return notice(message(err), "error")

    @app.callback(
        Output("f-msg", "children"), Output("f-token", "value"),
        Output("url", "pathname", allow_duplicate=True),
        Input("f-submit", "n_clicks"),
        State("f-base", "value"), State("f-base-rev", "value"), State("f-tuned", "value"),
        State("f-tuned-rev", "value"), State("f-tol", "value"), State("f-rank", "value"),
        State("f-token", "value"),
        prevent_initial_call=True, running=[(Output("f-submit", "disabled"), True, False)],
    )
    async def submit(n, base, base_rev, tuned, tuned_rev, tol, rank, token):
        if not n:  # the form appearing is not a click
            return no_update, no_update, no_update
        if not (base or "").strip() or not (tuned or "").strip():
            return notice("Enter both a base and a finetuned model.", "error"), no_update, no_update
        body = {"base": base.strip(), "tuned": tuned.strip(), "tolerance": tol, "rank": rank}
        if (base_rev or "").strip():
            body["base_revision"] = base_rev.strip()
        if (tuned_rev or "").strip():
            body["tuned_revision"] = tuned_rev.strip()
        if (token or "").strip():
            body["token"] = token.strip()
        try:
            resp = await api.request("POST", "/api/analyses", json=body)
        except ApiError as err:
            # The token field is emptied either way: it is never kept in the page.
            return notice(message(err), "error"), "", no_update
        except Exception as err:  # noqa: BLE001
            return notice(message(err), "error"), "", no_update
        return "", "", resp.get("url") or f"/a/{resp['id']}"
