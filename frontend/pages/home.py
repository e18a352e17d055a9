"""Home: submit a base/finetuned pair, fill it from examples, list recent analyses."""

from __future__ import annotations

import datetime as dt

from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from .. import numbers as N
from ..apiclient import ApiError, message
from .picker import label
from .shell import badge, card, notice

# The study's pairs (docs/METRICS.md, reference table).
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
# A small Llama pretrained on addition, then finetuned by SFT and by RL (worker/demo/trained.py);
# `serve` trains it in the background, so its chips appear once GET /api/demo says it is ready.
TRAINED_PAIRS = (("local:demo/trained/base", "local:demo/trained/sft", "trained · SFT"),
                 ("local:demo/trained/base", "local:demo/trained/rl", "trained · RL"))
EXAMPLES = STUDY_PAIRS + DEMO_PAIRS + TRAINED_PAIRS
# The trained family's two runs (checkpoint-<step>/ folders), against the pretrained base, so step 0
# is the model they started from: POST /api/runs, then the run page /r/<id>.
TRAINED_RUNS = (("local:demo/trained/base", "local:demo/trained/sft_run", "SFT run"),
                ("local:demo/trained/base", "local:demo/trained/rl_run", "RL run"))


def layout(query: dict):
    tol_options = [{"label": N.fmt_tol(t) + (" (default)" if t == N.DEFAULT_TOLERANCE else ""),
                    "value": t} for t in N.EXACT_TOLERANCES if t > 0]
    form = card(
        html.H2("Analyze a finetuning run"),
        html.P("Compare a finetuned checkpoint with its base, tensor by tensor: which elements "
               "changed, where, and by how many representable steps.", className="muted"),
        html.Div(className="form-grid", children=[
            _field("Base model", dcc.Input(id="f-base", type="text",
                                           placeholder="org/name or local:dir (empty: a LoRA adapter's own base)",
                                           debounce=False, className="input", value=query.get("base", ""))),
            _field("Base revision", dcc.Input(id="f-base-rev", type="text", placeholder="main",
                                              className="input")),
            _field("Finetuned model", dcc.Input(id="f-tuned", type="text",
                                                placeholder="org/name or local:dir (a model or a LoRA adapter)",
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
            _field("Update geometry (SVDs of W, W̃ and Δ; sampled = first, middle, last layer)", dcc.RadioItems(
                id="f-geometry", value="off", inline=True, className="radios",
                options=[{"label": " off", "value": "off"}, {"label": " sampled", "value": "sampled"},
                         {"label": " all", "value": "all"}])),
            _field("Hub token (optional; used once, never stored or shown)",
                   dcc.Input(id="f-token", type="password", autoComplete="off", className="input",
                             placeholder="hf_…", persistence=False)),
            # Shown when the deployment sets SUBNETSCOPE_API_TOKEN: submissions need it (reads do not).
            html.Div(id="f-api-token-row", hidden=not _DEPLOYMENT["token_required"], children=_field(
                "API token (this deployment takes submissions only with it)",
                dcc.Input(id="f-api-token", type="password", autoComplete="off", className="input",
                          placeholder="from the deployment's operator", persistence=False))),
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
            html.Div(id="demo-trained", children=trained_demo({"state": "absent"})),
            dcc.Store(id="demo-trained-state", data=None),
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
    # Shown once the trained family exists or any run was submitted (load_recent_runs decides).
    dynamics = html.Div(id="home-dynamics", hidden=True, children=card(
        html.Div(className="card-head", children=[
            html.H2("Training dynamics"),
            html.Span("final sparsity against the base, at the run's tolerance", className="muted small"),
        ]),
        html.P("Follow the changed set over a run's checkpoints: sparsity at each step, the sparsity of each "
               "update, and how much of what was ever changed ends outside the final subnetwork.",
               className="muted"),
        html.Div(id="dyn-chips"),
        html.Div(id="dyn-msg", className="form-msg"),
        html.Div(id="recent-runs"),
    ))
    return html.Div([form, dynamics, recent])


# What this deployment asks of a submitter; set once by register() from the Api.
_DEPLOYMENT = {"token_required": False}

# While the API resolves the pair (seconds, or the Hub budget when the Hub hangs) the form says so.
PENDING_JS = """
function(n, base, tuned) {
    if (!n) { return window.dash_clientside.no_update; }
    const hub = [base, tuned].map(s => (s || '').trim()).filter(s => s && !s.startsWith('local:'));
    const text = hub.length ? 'Resolving ' + hub.join(' and ') + ' on the Hub…'
                            : 'Reading the checkpoints\u2019 headers…';
    return {namespace: 'dash_html_components', type: 'Div',
            props: {children: text, className: 'notice notice-info', id: 'f-pending'}};
}
"""


def trained_demo(status: dict):
    """The trained family's chips once it exists, else how far its background training is."""
    head = html.Div("Trained family (a small Llama: pretrained, then SFT and RL runs)", className="examples-label")
    state = status.get("state")
    if state == "ready":
        first = len(STUDY_PAIRS) + len(DEMO_PAIRS)
        return [head, html.Div(className="chips", children=[
            html.Button(label, id={"type": "example", "index": first + i}, n_clicks=0,
                        className="chip chip-demo", title=f"{base} → {tuned}")
            for i, (base, tuned, label) in enumerate(TRAINED_PAIRS)])]
    if state == "training":
        pct = status.get("percent") or 0.0
        stage = f" ({status['stage']})" if status.get("stage") else ""
        return [head, html.Div(f"training the demo: {pct:.0f} %{stage}", id="demo-training",
                               className="muted small")]
    if state == "failed":
        return [head, html.Div(f"training the demo failed: {status.get('message') or 'see the server log'}",
                               id="demo-training", className="muted small")]
    return []


def trained_runs(status: dict):
    """The trained family's run chips (they submit a run and open its page) once it exists."""
    if status.get("state") != "ready":
        return []
    return [html.Div("The trained family's runs (pretrained base = step 0)", className="examples-label"),
            html.Div(className="chips", children=[
                html.Button(label, id={"type": "run-example", "index": i}, n_clicks=0,
                            className="chip chip-demo", title=f"{run} against {base}")
                for i, (base, run, label) in enumerate(TRAINED_RUNS)])]


def _run_name(item: dict) -> str:
    run = str(item.get("run") or item.get("id") or "")
    return run[len("local:"):] if run.startswith("local:") else run


def recent_runs_table(items: list[dict]):
    if not items:
        return html.Div("No training runs yet.", className="muted small")
    rows = []
    for item in items:
        rid = item.get("id", "")
        final = item.get("final") or {}
        sparsity = final.get("sparsity")
        rows.append(html.Tr([
            html.Td(dcc.Link(_run_name(item), href=item.get("url") or f"/r/{rid}", className="pair-link"),
                    title=f"base {item.get('base')}"),
            html.Td(badge(item.get("status"))),
            html.Td(N.fmt_int(item.get("checkpoints")), className="num"),
            html.Td("–" if sparsity is None else N.fmt_pct(sparsity), className="num"),
            html.Td(_when(item.get("created_at")), className="muted small"),
        ], **{"data-id": rid}))
    return html.Table(className="table compact", id="recent-runs-table", children=[
        html.Thead(html.Tr([html.Th("Run"), html.Th("Status"), html.Th("Checkpoints", className="num"),
                            html.Th("Final sparsity", className="num"), html.Th("Submitted")])),
        html.Tbody(rows),
    ])


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
    _DEPLOYMENT["token_required"] = bool(getattr(api, "token_required", False))

    app.clientside_callback(PENDING_JS, Output("f-msg", "children", allow_duplicate=True),
                            Input("f-submit", "n_clicks"), State("f-base", "value"), State("f-tuned", "value"),
                            prevent_initial_call=True)

    @app.callback(Output("f-base", "value"), Output("f-tuned", "value"),
                  Input({"type": "example", "index": ALL}, "n_clicks"), prevent_initial_call=True)
    def fill_example(clicks):
        # A chip that just appeared (the trained family) fires this too, with n_clicks 0.
        if not ctx.triggered_id or not any(t.get("value") for t in ctx.triggered):
            return no_update, no_update
        base, tuned, _ = EXAMPLES[ctx.triggered_id["index"]]
        return base, tuned

    @app.callback(Output("demo-trained", "children"), Output("demo-trained-state", "data"),
                  Output("dyn-chips", "children"),
                  Input("home-tick", "n_intervals"), State("demo-trained-state", "data"))
    async def load_trained_demo(_n, shown):
        try:
            status = (await api.request("GET", "/api/demo"))["trained"]
        except Exception:  # noqa: BLE001 - the chips are a convenience; the health banner reports errors
            return no_update, no_update, no_update
        key = [status.get("state"), round(status.get("percent") or 0), status.get("stage")]
        if key == shown:  # re-rendering the chips would reset them under the user's pointer
            return no_update, no_update, no_update
        return trained_demo(status), key, trained_runs(status)

    @app.callback(Output("recent-runs", "children"), Output("home-dynamics", "hidden"),
                  Input("home-tick", "n_intervals"), Input("demo-trained-state", "data"))
    async def load_recent_runs(_n, trained):
        try:
            items = (await api.request("GET", "/api/runs", params={"limit": 5}))["items"]
        except Exception as err:  # noqa: BLE001 - shown on the page
            return notice(message(err), "error"), no_update
        ready = bool(trained) and trained[0] == "ready"
        return recent_runs_table(items), not (ready or items)

    @app.callback(
        Output("dyn-msg", "children"), Output("url", "pathname", allow_duplicate=True),
        Output("api-token", "data", allow_duplicate=True),
        Input({"type": "run-example", "index": ALL}, "n_clicks"),
        State("f-api-token", "value"), State("api-token", "data"),
        prevent_initial_call=True,
    )
    async def submit_run(_clicks, api_token, kept_api_token):
        # The chips appearing fire this too, with n_clicks 0.
        if not ctx.triggered_id or not any(t.get("value") for t in ctx.triggered):
            return no_update, no_update, no_update
        base, run, _ = TRAINED_RUNS[ctx.triggered_id["index"]]
        api_token = (api_token or "").strip() or kept_api_token or None
        keep = api_token if api_token != kept_api_token else no_update
        try:
            resp = await api.request("POST", "/api/runs", json={"base": base, "run": run}, token=api_token)
        except ApiError as err:
            return notice(message(err), "error"), no_update, None if err.status == 401 else keep
        except Exception as err:  # noqa: BLE001
            return notice(message(err), "error"), no_update, no_update
        return "", resp.get("url") or f"/r/{resp['id']}", keep

    @app.callback(Output("recent-table", "children"), Input("home-tick", "n_intervals"))
    async def load_recent(_n):
        try:
            return recent_table(await api.recent(limit=25))
        except Exception as err:  # noqa: BLE001 - shown on the page
            return notice(message(err), "error")

    @app.callback(
        Output("f-msg", "children"), Output("f-token", "value"),
        Output("url", "pathname", allow_duplicate=True), Output("api-token", "data"),
        Input("f-submit", "n_clicks"),
        State("f-base", "value"), State("f-base-rev", "value"), State("f-tuned", "value"),
        State("f-tuned-rev", "value"), State("f-tol", "value"), State("f-rank", "value"),
        State("f-geometry", "value"), State("f-token", "value"), State("f-api-token", "value"), State("api-token", "data"),
        prevent_initial_call=True, running=[(Output("f-submit", "disabled"), True, False)],
    )
    async def submit(n, base, base_rev, tuned, tuned_rev, tol, rank, geometry, token, api_token, kept_api_token):
        if not n:  # the form appearing is not a click
            return no_update, no_update, no_update, no_update
        # The API token typed now, else the one this tab used before (kept for retries and overlaps).
        api_token = (api_token or "").strip() or kept_api_token or None
        keep = api_token if api_token != kept_api_token else no_update
        if not (tuned or "").strip():
            return notice("Enter a finetuned model (and its base, unless it is a LoRA adapter).", "error"), \
                no_update, no_update, no_update
        body = {"tuned": tuned.strip(), "tolerance": tol, "rank": rank, "geometry": geometry}
        if (base or "").strip():  # empty: the API takes the base a LoRA adapter's config names
            body["base"] = base.strip()
        if (base_rev or "").strip():
            body["base_revision"] = base_rev.strip()
        if (tuned_rev or "").strip():
            body["tuned_revision"] = tuned_rev.strip()
        if (token or "").strip():
            body["token"] = token.strip()
        try:
            resp = await api.request("POST", "/api/analyses", json=body, token=api_token)
        except ApiError as err:
            # The Hub token field is emptied either way: it is never kept in the page. The API's
            # own message is shown (a Hub outage, a refused token, a rate limit, Redis down).
            return notice(message(err), "error"), "", no_update, None if err.status == 401 else keep
        except Exception as err:  # noqa: BLE001
            return notice(message(err), "error"), "", no_update, no_update
        return "", "", resp.get("url") or f"/a/{resp['id']}", keep
