"""The analysis page's Precision tab: is the sparsity real, or storage absorbing small updates?"""

from __future__ import annotations

from dash import html

from ..figures import analysis as FA
from ..figures import precision as F


def precision_content(result: dict, t: float, g) -> list:
    """`g(figure, id)` makes a graph component (the analysis page's, with its config)."""
    p = F.precision(result)
    items = [html.P(F.sentence(result, t), id="precision-sentence", className="lead")]
    if p and p.get("cosine") is not None:
        items.append(html.P(f"Cosine similarity of base and tuned (float64 sums): {p['cosine']:.10f}",
                            id="precision-cosine", className="muted small"))
    items += [html.H3("Changed share by the base weight's magnitude"),
              g(F.magnitude_lines(result), "fig-precision-magnitude")]
    cf = F.counterfactual_bars(result)
    if cf is not None:
        items += [html.H3("Storage counterfactual: the same pair rounded to bf16"),
                  g(cf, "fig-precision-counterfactual")]
    items.append(html.Div(className="two-col", children=[
        html.Div([html.H3("Moved at most one step, by |w|"), g(F.one_step_by_magnitude(result), "fig-precision-onestep")],
                 className="col-wide"),
        html.Div([html.H3("ULP distance"), g(FA.ulp_histogram(result), "fig-ulp")], className="col-narrow"),
    ]))
    items.append(html.P("bf16 has 8 significant bits, so a one-step change of a weight ≥ 0.002 already exceeds "
                        "t = 1e-5: small tolerances only matter for near-zero weights.", className="muted small"))
    return items
