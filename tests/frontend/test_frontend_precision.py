"""The Precision tab's figures and sentence (frontend/figures/precision.py) on real engine results."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from frontend.figures import precision as F
from worker.engine import AnalysisOptions, analyze, open_source, parse_source


@pytest.fixture(scope="module")
def fp32_result(tmp_path_factory):
    """An fp32 pair where 40 % of the updates sit below half a bf16 step."""
    root = tmp_path_factory.mktemp("fp32")
    g = torch.Generator().manual_seed(11)
    base = (torch.randn(96, 80, generator=g) * 0.02).to(torch.bfloat16).float()
    step = torch.ldexp(torch.ones_like(base), torch.frexp(base)[1] - 8) * torch.sign(base)
    pick = torch.rand(base.shape, generator=g)
    tuned = torch.where(pick < 0.4, base + 0.3 * step, torch.where(pick < 0.6, base + 2 * step, base))
    for name, w in (("base", base), ("tuned", tuned)):
        (root / name).mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": w}, str(root / name / "model.safetensors"))
        (root / name / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with open_source(parse_source(str(root / "base"), allow_any_path=True)) as b, \
            open_source(parse_source(str(root / "tuned"), allow_any_path=True)) as u:
        return analyze(b, u, AnalysisOptions(device="cpu"))


def test_changed_share_by_magnitude_draws_every_exact_tolerance(demo_results):
    result = demo_results["rl_a"]
    p = result["summary"]["precision"]
    fig = F.magnitude_lines(result)
    lines = [tr for tr in fig.data if tr.type == "scatter"]
    assert [tr.name for tr in lines] == [f"t = {F.N.fmt_tol(float(k))}" for k in p["changed"]]
    idx = [i for i, b in enumerate(p["bins"]) if 2 <= b <= 255]
    key = "1e-05"
    line = lines[list(p["changed"]).index(key)]
    assert list(line.y) == pytest.approx([100 * p["changed"][key][i] / p["compared"][i] for i in idx])
    assert list(line.x) == pytest.approx([1.5 * 2.0 ** (p["bins"][i] - F.MAG_OFFSET) for i in idx])
    assert fig.layout.xaxis.type == "log"
    # the bf16 step: one dotted line per tolerance whose edge |w| = t 2^7 falls inside the data
    edges = sorted(s.x0 for s in fig.layout.shapes)
    assert pytest.approx(1e-5 * 128) in edges


def test_bf16_pairs_say_no_counterfactual_applies(demo_results):
    result = demo_results["rl_a"]
    assert F.counterfactual_bars(result) is None
    text = F.sentence(result, 1e-5)
    small, big, _ = F.split_shares(result["summary"]["precision"], "1e-05")
    assert F.N.fmt_pct(small) in text and F.N.fmt_pct(big) in text
    assert "no storage counterfactual applies" in text


def test_fp32_pair_shows_what_bf16_storage_erases(fp32_result):
    cf = fp32_result["summary"]["precision"]["counterfactual"]
    fig = F.counterfactual_bars(fp32_result)
    stored, rounded = fig.data[0], fig.data[1]
    assert list(stored.y) == list(cf["bfloat16"]["stored"].values())
    assert list(rounded.y) == list(cf["bfloat16"]["rounded"].values())
    assert [tr.name for tr in fig.data] == ["as stored", "both rounded to bfloat16", "both rounded to float16"]
    erased = F.erased_share(cf["bfloat16"])
    assert erased == pytest.approx(2 / 3, abs=0.05)  # 40 % of the weights moved under half a step, 20 % over
    text = F.sentence(fp32_result, 0.0)
    assert f"{cf['bfloat16']['rounded']['0.0']:,} of the {cf['bfloat16']['stored']['0.0']:,}" in text
    assert F.N.fmt_pct(erased) in text


def test_results_without_precision_figures_say_so(demo_results):
    old = {**demo_results["sft"], "summary": {k: v for k, v in demo_results["sft"]["summary"].items()
                                              if k != "precision"}}
    assert F.counterfactual_bars(old) is None
    assert "no precision figures" in F.sentence(old, 1e-5)
    assert F.magnitude_lines(old).layout.annotations[0].text.startswith("No precision figures")
