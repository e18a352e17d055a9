"""Compare: several analyses side by side (the study's Table 1 and Figure 1)."""

from __future__ import annotations

import asyncio

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import numbers as N
from .. import report as R
from ..apiclient import message
from ..figures import analysis as FA
from ..figures import compare as F
from ..figures import precision as FP
from ..figures import theme as T
from .picker import fetch_many, label, options, parse_ids
from .shell import card, notice


def layout(query: dict):
    ids = parse_ids(query.get("ids"))
    t = N.parse_tolerance(query.get("t"))
    if t not in N.EXACT_TOLERANCES:
        t = N.DEFAULT_TOLERANCE
    return html.Div([
        card(
            html.H2("Compare analyses"),
            html.P("Update sparsity of several finetuning runs side by side, with the values the "
                   "study reports where it has them.", className="muted"),
            html.Div(className="form-grid", children=[
                html.Label(className="field field-wide", children=[
                    html.Span("Finished analyses", className="field-label"),
                    dcc.Dropdown(id="cmp-ids", multi=True, value=ids,
                                 options=[{"label": i, "value": i} for i in ids],
                                 placeholder="Pick analyses…", className="dropdown")]),
                html.Label(className="field", children=[
                    html.Span("…or paste ids / permalinks (Enter)", className="field-label"),
                    dcc.Input(id="cmp-paste", type="text", className="input", placeholder="a1b2c3…, d4e5f6…")]),
                html.Label(className="field", children=[
                    html.Span("Tolerance", className="field-label"),
                    dcc.Dropdown(id="cmp-tol", value=t, clearable=False, className="dropdown",
                                 options=[{"label": N.fmt_tol(x), "value": x} for x in N.EXACT_TOLERANCES])]),
            ]),
        ),
        card(dcc.Graph(id="cmp-fig", figure=T.empty("Pick finished analyses to compare."),
                       config={"displaylogo": False}),
             html.Div(id="cmp-table"),
             html.Div(className="downloads", children=[
                 html.Button("Download report", id="cmp-report", n_clicks=0, className="btn btn-ghost",
                             title="One HTML file with every figure; opens offline, no server needed"),
                 dcc.Download(id="cmp-report-file"),
             ])),
    ])


def numbers_table(ids: list[str], analyses: list, t: float):
    cols = [x for x in N.EXACT_TOLERANCES]
    head = [html.Th("Pair"), html.Th("Elements", className="num")] + [
        html.Th(N.fmt_tol(x), className="num" + (" col-current" if x == t else "")) for x in cols] + [
        html.Th("Study (1e-5)", className="num"),
        html.Th("Mean rank (study)", className="num", title="the study's rule: float32 torch.linalg.matrix_rank(Δ) "
                "/ min(m, n), unweighted mean over matrices"),
        html.Th("Mean rank (float64)", className="num", title="numerical rank in float64: singular values above "
                "σ₁ · max(m, n) · 2⁻⁵², unweighted mean over matrices"),
        html.Th("Principal energy 5 %", className="num", title="two-sided share of ‖Δ‖² in the base's top 5 % "
                "singular subspaces (random baseline in brackets), element-weighted"),
        html.Th("Rotation U / V", className="num", title="mean sin of the principal angles at k = 5 %"),
        html.Th("Drift", className="num", title="‖σ(W̃) − σ(W)‖ / ‖σ(W)‖, element-weighted")]
    rows = []
    for aid, a in zip(ids, analyses):
        if isinstance(a, Exception) or not (a.get("result")):
            why = message(a) if isinstance(a, Exception) else f"status: {a.get('status')}"
            rows.append(html.Tr([html.Td(html.A(aid, href=f"/a/{aid}")),
                                 html.Td(why, colSpan=len(cols) + 7, className="muted")]))
            continue
        r = a["result"]
        summary = r.get("summary") or {}
        ref = ((r.get("reference") or {}).get("sparsity") or {}).get("1e-05")
        cells = []
        for x in cols:
            s, _ = N.result_sparsity(r, x)
            cells.append(html.Td(N.fmt_pct(s), className="num" + (" col-current" if x == t else "")))
        rows.append(html.Tr([
            html.Td(dcc.Link(label(a), href=f"/a/{aid}", className="pair-link")),
            html.Td(N.fmt_int(summary.get("numel")), className="num"), *cells,
            html.Td(f"{ref:.2f} %" if ref is not None else "–", className="num ref"),
            html.Td(N.fmt_pct(N.mean_rank(r), 1) if N.mean_rank(r) is not None else "–", className="num"),
            html.Td(N.fmt_pct(N.mean_rank_f64(r), 1) if N.mean_rank_f64(r) is not None else "–",
                    className="num rank-f64"),
            *geometry_cells(r),
        ], **{"data-id": aid}))
    return html.Div(className="table-scroll", children=html.Table(
        className="table", id="compare-table",
        children=[html.Thead(html.Tr(head)), html.Tbody(rows)]))


def geometry_cells(result: dict) -> list:
    """Principal energy at 5 % (random), rotation U / V, drift: '–' where geometry was off."""
    g = FA.geometry_summary(result)
    if g is None:
        return [html.Td("–", className="num muted", title="geometry off") for _ in range(3)]
    i = FA.headline_index(0.05, g["q"])
    e, b, rot = g["energy"]["two_sided"][i], g["baseline"]["two_sided"][i], g["rotation"]
    return [html.Td([N.fmt_pct(e, 3), html.Span(f" ({N.fmt_pct(b, 3)})", className="muted")], className="num geo"),
            html.Td(f"{rot['u_mean_sin'][i]:.4f} / {rot['v_mean_sin'][i]:.4f}", className="num geo"),
            html.Td(f"{g['drift']:.3g}" if g.get("drift") is not None else "–", className="num geo")]


PRECISION_HEAD = [
    html.Th(f"Changed |w| < 2^{FP.SPLIT_EXPONENT} / larger", className="num",
            title="changed share at the chosen tolerance of the small base weights, and of the rest"),
    html.Th("≤ 1 step", className="num", title="share of the changed elements that moved one representable step"),
    html.Th("bf16 erases", className="num", title="share of the changed elements (t = 0) that rounding both sides "
            "to bf16 would leave equal; only for pairs stored wider than bf16 (fp32, fp16)"),
    html.Th("1 − cosine", className="num", title="1 − cosine similarity of base and tuned (float64 sums)")]


def precision_table(ids: list[str], analyses: list, t: float):
    """The Precision tab's headline numbers of each finished analysis, side by side (an RL and an SFT pair,
    each stored in bf16 and as fp32 masters)."""
    rows = [html.Tr([html.Td(dcc.Link(label(a), href=f"/a/{aid}?tab=precision", className="pair-link")),
                     *precision_cells(a["result"], t)], **{"data-id": aid})
            for aid, a in zip(ids, analyses) if not isinstance(a, Exception) and a.get("result")]
    return html.Div(className="table-scroll", children=[
        html.H3(f"Precision at t = {N.fmt_tol(t)}"),
        html.Table(className="table", id="compare-precision", children=[
            html.Thead(html.Tr([html.Th("Pair"), *PRECISION_HEAD])), html.Tbody(rows)])])


def precision_cells(result: dict, t: float) -> list:
    """The Precision tab's headline numbers: '–' where a result has none or none applies."""
    p = FP.precision(result)
    if not p:
        return [html.Td("–", className="num muted prec", title="no precision figures") for _ in PRECISION_HEAD]
    key = N.tol_key(t) if N.tol_key(t) in p["changed"] else "1e-05"
    small, big, _ = FP.split_shares(p, key)
    one = ((result.get("summary") or {}).get("ulp") or {}).get("one_step_share")
    cf = (p.get("counterfactual") or {}).get("bfloat16")
    erased = FP.erased_share(cf) if cf else None
    cos = p.get("cosine")
    return [html.Td(f"{N.fmt_pct(small)} / {N.fmt_pct(big)}", className="num prec"),
            html.Td(N.fmt_pct(one), className="num prec"),
            html.Td(N.fmt_pct(erased) if cf else "–", className="num prec",
                    title=None if cf else "stored in bf16 or narrower: no counterfactual"),
            html.Td(f"{1 - cos:.2e}" if cos is not None else "–", className="num prec")]


def register(app, api):
    @app.callback(Output("cmp-ids", "value", allow_duplicate=True), Output("cmp-paste", "value"),
                  Input("cmp-paste", "n_submit"), State("cmp-paste", "value"), State("cmp-ids", "value"),
                  prevent_initial_call=True)
    def paste(_n, text, current):
        return list(current or []) + [i for i in parse_ids(text) if i not in (current or [])], ""

    @app.callback(
        Output("cmp-fig", "figure"), Output("cmp-table", "children"), Output("cmp-ids", "options"),
        Output("url", "search", allow_duplicate=True),
        Input("cmp-ids", "value"), Input("cmp-tol", "value"), State("url", "search"),
        prevent_initial_call="initial_duplicate",
    )
    async def render(ids, t, search):
        ids = list(ids or [])
        try:
            opts = await options(api, ids)
        except Exception as err:  # noqa: BLE001 - shown on the page
            return T.empty("The API is unavailable."), notice(message(err), "error"), [], no_update
        analyses = await fetch_many(api, ids)
        items = [(label(a), a.get("result")) for a in analyses
                 if not isinstance(a, Exception) and a.get("result")]
        new_search = f"?ids={','.join(ids)}&t={N.fmt_tol(t)}" if ids else f"?t={N.fmt_tol(t)}"
        table = html.Div([numbers_table(ids, analyses, t), precision_table(ids, analyses, t)]) if ids else None
        return (F.compare_bars(items, t), table, opts,
                no_update if search == new_search else new_search)

    @app.callback(Output("cmp-report-file", "data"), Input("cmp-report", "n_clicks"), State("cmp-ids", "value"),
                  State("cmp-tol", "value"), prevent_initial_call=True)
    async def download_report(n, ids, t):
        analyses = await fetch_many(api, list(ids or []))
        items = [(label(a), a["result"]) for a in analyses if not isinstance(a, Exception) and a.get("result")]
        if not n or not items:
            raise PreventUpdate
        page = await asyncio.to_thread(R.compare_report, items, float(t))
        return {"content": page, "filename": "subnetscope-compare.html", "type": "text/html"}
