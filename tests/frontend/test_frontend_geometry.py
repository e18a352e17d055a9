"""Geometry and drill-down figures on real engine output (demo family: rl_a geometry all, sft sampled)."""

from __future__ import annotations

import pytest

from frontend.figures import analysis as FA
from frontend.figures import tensor as FT
from frontend.pages import compare, tensor
from worker.engine.masks import density, load_masks


def _stacked(records: list[dict], stacks: tuple[str, str]) -> list[dict]:
    """The same records twice, once per stack (an encoder and a decoder of equal shape)."""
    return [{**rec, "stack": stack, "name": rec["name"].replace("model.layers", stack)}
            for stack in stacks for rec in records if rec["layer"] is not None]


def test_principal_energy_plots_the_summary_against_its_baselines(demo_results):
    r = demo_results["rl_a"]
    g = r["summary"]["geometry"]
    fig = FA.principal_energy(r)
    by_name = {tr.name: tr for tr in fig.data}
    assert len(fig.data) == 6
    assert list(fig.data[0].x) == [1, 5, 10, 20]
    two, two_random = fig.data[0], fig.data[1]
    assert list(two.y) == pytest.approx([100 * v for v in g["energy"]["two_sided"]])
    assert list(two_random.y) == pytest.approx([100 * v for v in g["baseline"]["two_sided"]])
    left = next(tr for name, tr in by_name.items() if name.startswith("left") and "random" not in name)
    assert list(left.y) == pytest.approx([100 * v for v in g["energy"]["left"]])
    assert str(g["matrices"]) in fig.layout.title.text


def test_geometry_figures_say_how_to_get_them_when_off(demo_results):
    r = demo_results["rl_b"]
    assert r["summary"]["geometry"] == {"mode": "off", "matrices": 0}
    text = FA.principal_energy(r).layout.annotations[0].text
    assert "geometry mode: off" in text and "sampled" in text
    assert "not computed" in FT.singular_spectra(r["tensors"][1]).layout.annotations[0].text
    assert [c.children for c in compare.geometry_cells(r)] == ["–", "–", "–"]


def test_geometry_heatmap_cells_are_the_records_energy_at_5_percent(demo_results):
    r = demo_results["rl_a"]
    fig = FA.geometry_heatmap(r["tensors"])
    hm = fig.data[0]
    rec = next(t for t in r["tensors"] if t["layer"] == 2 and t["module"] == "mlp.down_proj")
    row, col = list(hm.y).index("2"), list(hm.x).index("mlp.down_proj")
    i = rec["geometry"]["q"].index(0.05)
    assert hm.z[row][col] == pytest.approx(100 * rec["geometry"]["energy"]["two_sided"][i])
    assert hm.customdata[row][col] == rec["name"]  # a click opens this tensor
    assert "input_layernorm" not in hm.x  # 1-D: no geometry
    sampled = FA.geometry_heatmap(demo_results["sft"]["tensors"]).data[0]
    assert list(sampled.y) == ["0", "2", "3"]  # first, middle and last layer of the stack


def test_geometry_heatmap_draws_one_block_per_stack(demo_results):
    tensors = _stacked(demo_results["rl_a"]["tensors"], ("encoder.block", "decoder.block"))
    fig = FA.geometry_heatmap(tensors)
    assert [tr.name for tr in fig.data] == ["decoder.block", "encoder.block"]
    assert {tr.coloraxis for tr in fig.data} == {"coloraxis"}
    assert list(fig.data[0].z) == list(fig.data[1].z)


def test_geometry_layers_are_element_weighted_over_the_layer(demo_results):
    r = demo_results["rl_a"]
    fig = FA.geometry_layers(r["tensors"])
    u, _, drift = fig.data
    layer1 = [t for t in r["tensors"] if t["layer"] == 1 and t["geometry"]]
    i = layer1[0]["geometry"]["q"].index(0.05)
    total = sum(t["numel"] for t in layer1)
    want = sum(t["numel"] * t["geometry"]["rotation"]["u_mean_sin"][i] for t in layer1) / total
    at = list(u.x).index("1")
    assert u.y[at] == pytest.approx(want)
    assert drift.y[at] == pytest.approx(sum(t["numel"] * t["geometry"]["drift"] for t in layer1) / total)
    assert "outside" in u.x  # embed_tokens and lm_head


def test_sparsity_heatmap_cells_link_to_their_tensor(demo_results):
    r = demo_results["rl_b"]
    hm = FA.layer_module_heatmap(r["tensors"], r["curve_tolerances"], 1e-5).data[0]
    assert hm.customdata[list(hm.y).index("3")][list(hm.x).index("self_attn.v_proj")] == \
        "model.layers.3.self_attn.v_proj.weight"


def test_mask_density_of_the_embedding_matches_the_mask(demo_results):
    path = demo_results["_masks"]["rl_a"]
    name = "model.embed_tokens.weight"
    mask = load_masks(path)[name].numpy()
    d = density(path, name, bins=64)
    assert d["shape"] == [512, 128] and d["changed"] == int(mask.sum())
    assert len(d["density"]) == 64 and len(d["density"][0]) == 64
    assert d["density"][5][7] == pytest.approx(mask[40:48, 14:16].mean())
    assert sum(d["row_hist"]) == 512 and sum(d["col_hist"]) == 128
    assert d["row_hist"][0] == int((mask.sum(axis=1) == 0).sum())
    rec = next(t for t in demo_results["rl_a"]["tensors"] if t["name"] == name)
    assert d["row_coverage"] == pytest.approx(rec["row_coverage"])
    assert d["col_coverage"] == pytest.approx(rec["col_coverage"])
    fig = FT.mask_density(d)
    assert fig.data[0].z[5][7] == pytest.approx(100 * mask[40:48, 14:16].mean())
    assert FT.mask_density(d, "log").data[0].colorbar.title.text.startswith("log10")
    cov = FT.coverage_histograms(d)
    assert list(cov.data[0].y) == d["row_hist"] and list(cov.data[1].y) == d["col_hist"]
    one_d = density(path, "model.norm.weight")
    assert one_d["shape"] == [128] and len(one_d["density"]) == 1


def test_drilldown_figures_use_the_tensor_record(demo_results):
    r = demo_results["rl_a"]
    rec = next(t for t in r["tensors"] if t["name"] == "model.layers.1.mlp.up_proj.weight")
    spectra = FT.singular_spectra(rec)
    assert list(spectra.data[0].y) == rec["geometry"]["spectra"]["base"]
    assert list(spectra.data[1].y) == rec["geometry"]["spectra"]["tuned"]
    assert len(spectra.data[0].x) == min(rec["shape"])
    ulp = FT.tensor_ulp(rec, r["summary"]["ulp"]["buckets"])
    assert ulp.data[0].y[0] == rec["ulp"][0]
    assert tensor.href("abc", "model.layers.1.mlp.up_proj.weight") == "/a/abc/t/model.layers.1.mlp.up_proj.weight"
    assert tensor.href("abc", "a/b c") == "/a/abc/t/a%2Fb%20c"
    assert tensor.view_state({"scale": "log", "spec": "nonsense"}) == ("log", "log")
