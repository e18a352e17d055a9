"""Figure functions on real engine results: the plotted numbers are the result's numbers."""

from __future__ import annotations

import copy
import math

import plotly.graph_objects as go
import pytest

from frontend import numbers as N
from frontend.figures import analysis as FA
from frontend.figures import compare as FC
from frontend.figures import overlap as FO
from frontend.figures import venn as V


def _annotation_texts(fig: go.Figure) -> str:
    return " ".join(a.text or "" for a in fig.layout.annotations)


def test_tolerance_curve_plots_the_result(demo_results):
    r = demo_results["rl_a"]
    fig = FA.tolerance_curve(r, 3e-6, "sparsity")
    curve, exact = fig.data[0], fig.data[1]
    assert fig.layout.xaxis.type == "log"
    assert list(curve.x) == r["curve_tolerances"]
    numel = r["summary"]["numel"]
    assert curve.y[5] == pytest.approx(100 * (1 - r["summary"]["curve_changed"][5] / numel))
    assert list(exact.x) == [t for t in r["tolerances"] if t > 0]
    assert exact.y[3] == pytest.approx(100 * r["summary"]["sparsity"]["1e-05"])
    texts = _annotation_texts(fig)
    assert "analysis t = 1e-5" in texts and "view t = 3e-6" in texts and "bit-exact" in texts
    density = FA.tolerance_curve(r, 1e-5, "density")
    assert density.data[1].y[3] == pytest.approx(100 - exact.y[3])


def test_heatmap_cells_are_element_weighted_sparsity(demo_results):
    r = demo_results["rl_b"]
    fig = FA.layer_module_heatmap(r["tensors"], r["curve_tolerances"], 1e-5, "sparsity")
    hm = fig.data[0]
    layers = sorted({t["layer"] for t in r["tensors"] if t["layer"] is not None})
    assert list(hm.y) == [str(layer) for layer in layers]
    assert "self_attn.q_proj" in hm.x and not any("embed_tokens" in m or "lm_head" in m for m in hm.x)
    rec = next(t for t in r["tensors"] if t["layer"] == 1 and t["module"] == "self_attn.q_proj")
    cell = hm.z[list(hm.y).index("1")][list(hm.x).index("self_attn.q_proj")]
    assert cell == pytest.approx(100 * (1 - rec["changed"]["1e-05"] / rec["numel"]))
    dens = FA.layer_module_heatmap(r["tensors"], r["curve_tolerances"], 1e-5, "density").data[0]
    assert dens.z[list(dens.y).index("1")][list(dens.x).index("self_attn.q_proj")] == pytest.approx(100 - cell)


def _stacked(records: list[dict], stacks: tuple[str, str]) -> list[dict]:
    """The same records twice, once per stack (an encoder and a decoder of equal shape)."""
    out = []
    for stack in stacks:
        for rec in records:
            if rec["layer"] is not None:
                out.append({**rec, "stack": stack, "name": rec["name"].replace("model.layers", stack)})
    return out


def test_heatmap_draws_one_block_per_stack_on_one_scale(demo_results):
    r = demo_results["rl_b"]
    tensors = _stacked(r["tensors"], ("encoder.block", "decoder.block"))
    # The decoder's copy of layer 0 is made dense: only its block may show it.
    for rec in tensors:
        if rec["stack"] == "decoder.block" and rec["layer"] == 0:
            rec["changed"] = {k: rec["numel"] for k in rec["changed"]}
            rec["curve_changed"] = [rec["numel"]] * len(rec["curve_changed"])
    fig = FA.layer_module_heatmap(tensors, r["curve_tolerances"], 1e-5)
    assert [tr.name for tr in fig.data] == ["decoder.block", "encoder.block"]
    assert {tr.coloraxis for tr in fig.data} == {"coloraxis"}
    dec, enc = fig.data
    layers = sorted({t["layer"] for t in r["tensors"] if t["layer"] is not None})
    assert list(dec.y) == list(enc.y) == [str(layer) for layer in layers]  # never merged into one row set
    q = list(dec.x).index("self_attn.q_proj")
    assert dec.z[0][q] == 0.0 and enc.z[0][q] > 50
    assert {a.text for a in fig.layout.annotations} >= {"decoder.block", "encoder.block"}
    bars = FA.layer_bars(tensors, r["curve_tolerances"], 1e-5).data[0]
    assert "decoder.block 0" in bars.x and "encoder.block 0" in bars.x


def test_stack_labels_drop_the_shared_part():
    labels = N.stack_labels(["model.language_model.layers", "model.vision_tower.vision_model.encoder.layers"])
    assert labels == {"model.language_model.layers": "language_model.layers",
                      "model.vision_tower.vision_model.encoder.layers": "vision_tower.vision_model.encoder.layers"}
    assert N.layer_names([("model.layers", 0), ("model.layers", 1)]) == ["0", "1"]


def test_partial_heatmap_leaves_unfinished_cells_blank(demo_results):
    r = demo_results["sft"]
    partial = r["tensors"][:8]
    hm = FA.layer_module_heatmap(partial, None, 1e-5, title="partial").data[0]
    filled = sum(v is not None for row in hm.z for v in row)
    assert filled == len({(t["stack"], t["layer"], t["module"]) for t in partial if t["layer"] is not None})
    assert filled < len([t for t in r["tensors"] if t["layer"] is not None])


def test_layer_bars_cover_every_layer_and_the_rest(demo_results):
    r = demo_results["resized"]
    fig = FA.layer_bars(r["tensors"], r["curve_tolerances"], 1e-5)
    bar = fig.data[0]
    assert list(bar.x)[-1] == "outside"
    row = next(l for l in r["layers"] if l["layer"] == 0)
    assert bar.y[0] == pytest.approx(100 * (1 - row["changed"]["1e-05"] / row["numel"]))


def test_ulp_histogram_counts_every_changed_element(demo_results):
    r = demo_results["rl_a"]
    fig = FA.ulp_histogram(r)
    assert sum(fig.data[0].y) == sum(r["summary"]["ulp"]["counts"])
    assert f"{100 * r['summary']['ulp']['one_step_share']:.1f} %" in fig.layout.title.text


def test_rank_chart_with_and_without_rank(demo_results):
    with_rank = FA.rank_chart(demo_results["rl_a"])
    points = sum(len(tr.x) for tr in with_rank.data)
    assert points == demo_results["rl_a"]["summary"]["rank"]["matrices"]
    without = FA.rank_chart(demo_results["sft"])
    assert not without.data and "not computed" in _annotation_texts(without)


def test_venn2_areas_are_true_to_counts(demo_results):
    ov = demo_results["_overlap2"]
    fig = FO.venn(ov)
    circles = [s for s in fig.layout.shapes if s.type == "circle"]
    ra = (circles[0].x1 - circles[0].x0) / 2
    rb = (circles[1].x1 - circles[1].x0) / 2
    d = abs((circles[1].x0 + circles[1].x1) / 2 - (circles[0].x0 + circles[0].x1) / 2)
    assert rb ** 2 / ra ** 2 == pytest.approx(ov["b_changed"] / ov["a_changed"], rel=1e-9)
    assert V.lens_area(ra, rb, d) / (math.pi * ra ** 2) == pytest.approx(ov["both"] / ov["a_changed"], rel=1e-6)
    texts = _annotation_texts(fig)
    for count in (ov["a_changed"] - ov["both"], ov["b_changed"] - ov["both"], ov["both"]):
        assert N.fmt_int(count) in texts


def test_venn3_labels_every_region_with_its_count(demo_results):
    ov = demo_results["_overlap3"]
    fig = FO.venn(ov)
    assert len([s for s in fig.layout.shapes if s.type == "circle"]) == 3
    texts = _annotation_texts(fig)
    assert len(ov["venn"]) == 7
    for count in ov["venn"].values():
        if count:
            assert N.fmt_int(count) in texts


def test_venn3_pairwise_lenses_are_exact_when_placeable():
    sizes, pairs = (100.0, 80.0, 60.0), (30.0, 20.0, 25.0)
    circles = V.layout3(sizes, pairs)
    scale = circles[0][2] ** 2 * math.pi / sizes[0]
    for (i, j), want in zip(((0, 1), (0, 2), (1, 2)), pairs):
        (xi, yi, ri), (xj, yj, rj) = circles[i], circles[j]
        assert V.lens_area(ri, rj, math.hypot(xi - xj, yi - yj)) / scale == pytest.approx(want, rel=1e-6)


def test_lens_geometry():
    assert V.lens_area(1, 1, 0) == pytest.approx(math.pi)
    assert V.lens_area(1, 1, 2) == 0
    assert V.lens_area(2, 1, 0.5) == pytest.approx(math.pi)  # contained
    for target in (0.1, 1.0, 2.5):
        d = V.distance_for_overlap(1.0, 1.2, target)
        assert V.lens_area(1.0, 1.2, d) == pytest.approx(target, rel=1e-9)


def test_overlap_bars_and_layers(demo_results):
    ov = demo_results["_overlap2"]
    bars = FO.overlap_bars(ov)
    assert list(bars.data[0].y) == pytest.approx([100 * ov["o1"], 100 * ov["o2"], 100 * ov["jaccard"]])
    assert list(bars.data[1].y)[:2] == pytest.approx([100 * ov["random_o1"], 100 * ov["random_o2"]])
    hm = FO.overlap_layer_heatmap(ov).data[0]
    layer0 = next(l for l in ov["layers"] if l["layer"] == 0)
    assert hm.z[0][list(hm.x).index("0")] == pytest.approx(100 * layer0["o1"])


def test_compare_bars_and_the_study_reference(demo_results):
    items = [(name, demo_results[name]) for name in ("sft", "rl_a")]
    fig = FC.compare_bars(items, 1e-5)
    assert len(fig.data) == 1  # the demo pairs are not in the study
    assert list(fig.data[0].y) == pytest.approx([100 * r["summary"]["sparsity"]["1e-05"] for _, r in items])
    # Edge case: a result that carries the study's reported value gets a second bar.
    with_ref = copy.deepcopy(demo_results["rl_a"])
    with_ref["reference"] = {"sparsity": {"1e-05": 81.38, "1e-08": 76.04}, "source": "Table 1"}
    fig = FC.compare_bars([("rl_a", with_ref)], 1e-5)
    assert list(fig.data[1].y) == [81.38]


@pytest.mark.parametrize("build", [
    lambda: FA.tolerance_curve({}, 1e-5),
    lambda: FA.layer_module_heatmap([], None, 1e-5),
    lambda: FA.layer_bars([], None, 1e-5),
    lambda: FA.ulp_histogram({"summary": {"ulp": None}}),
    lambda: FA.rank_chart({"summary": {"rank": None}, "tensors": []}),
    lambda: FO.venn({"labels": ["a", "b"], "a_changed": 0, "b_changed": 0, "both": 0}),
    lambda: FO.overlap_layer_heatmap({}),
    lambda: FC.compare_bars([], 1e-5),
])
def test_empty_inputs_give_a_message_not_an_error(build):
    fig = build()
    assert isinstance(fig, go.Figure) and _annotation_texts(fig)
