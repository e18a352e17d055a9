"""The single-file report (frontend/report.py) and the plain summary (frontend/summary.py) on real
engine results: self-contained, drawn by the page's figure functions, sections only for what the
result holds, every sentence a number of the result beside its comparison point."""

from __future__ import annotations

import copy
import html
import json
import re

import pytest
import torch
from plotly.offline import get_plotlyjs
from safetensors.torch import save_file

from frontend import numbers as N
from frontend import report as R
from frontend import summary as S
from worker.engine import AnalysisOptions, analyze, open_source, parse_source


def figures_of(page: str) -> list[dict]:
    """The figure specs the report draws (its FIGURES array), as JSON."""
    script = page.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    array = script[script.index("const FIGURES = ") + len("const FIGURES = "):script.index(";\nfor (const")]
    return [spec for _div, spec in json.loads(array.replace("<\\/", "</"))]


def without_plotlyjs(page: str) -> str:
    js = get_plotlyjs()
    assert page.count(js) == 1  # inlined once, whole
    return page.replace(js, "")


def test_analysis_report_is_one_self_contained_file(demo_results):
    result, ov = demo_results["rl_a"], demo_results["_overlap2"]
    page = R.analysis_report(result, overlap=ov)
    rest = without_plotlyjs(page)
    # no request of any kind: no src/href attribute, no URL, no stylesheet link, no font import
    assert not re.search(r"\b(src|href)\s*=", rest), re.search(r".{40}\b(src|href)\s*=.{40}", rest)
    assert "http://" not in rest and "https://" not in rest and "<link" not in rest and "@import" not in rest
    figs = figures_of(page)
    assert len(figs) == rest.count('class="report-figure"')
    # curve, heatmap, layer bars, ULP, changed share by magnitude, rank, 3 geometry, 3 overlap: rl_a ran with
    # rank and geometry "all"; every analysis now measures the precision view
    assert len(figs) == 12
    # the figures are the page's own functions' output, not a second copy
    from frontend.figures import analysis as FA
    from frontend.figures import overlap as FO

    assert figs[0] == json.loads(FA.tolerance_curve(result, 1e-5).to_json())
    assert figs[-3] == json.loads(FO.venn(ov).to_json())
    # header, plain summary and numbers are the result's
    assert html.escape(S.plain_summary(result)) in page
    assert result["tuned"]["sha"] in page and result["engine_version"] in page
    assert N.fmt_int(result["summary"]["changed"]["1e-05"]) in page
    # the top tensor is the one with the largest changed share, computed here independently
    top = max(result["tensors"], key=lambda r: (r["changed"]["1e-05"] / r["numel"], r["numel"]))
    first_row = rest.split("Top 20 tensors", 1)[1].split("<tbody><tr>", 1)[1]
    assert first_row.startswith(f'<td class="">{top["name"]}</td>')


def test_sections_follow_what_the_result_holds(demo_results):
    plain = copy.deepcopy(demo_results["rl_b"])  # rank and geometry off
    plain.pop("patch", None)  # every analysis estimates its patch; a result from before did not
    page = R.analysis_report(plain)
    assert "<h2>Update rank</h2>" not in page and "<h2>Update geometry</h2>" not in page
    assert "<h2>Precision</h2>" in page  # the ULP histogram is always measured
    assert "<h2>Patch size</h2>" not in page and "The study&#x27;s value" not in page
    richer = copy.deepcopy(plain)
    # the fields other parts add (docs/CONTRACTS.md): precision view, float64 rank, patch estimate
    richer["summary"]["precision"] = {
        "bins": [120, 121], "labels": ["2^-8", "2^-7"], "compared": [400, 600],
        "changed": {"1e-05": [100, 300]}, "one_step_share": [0.5, None], "cosine": 0.9999919,
        "counterfactual": {"bfloat16": {"numel": 1000, "tensors": 2, "stored": {"1e-05": 1000},
                                        "rounded": {"1e-05": 250}}}}
    richer["summary"]["rank"] = {"mean": 0.5, "matrices": 3, "f64": {"mean": 0.75, "matrices": 3}}
    richer["patch"] = {"bytes": 12345, "share": 0.25, "tuned_bytes": 49380}
    richer["reference"] = {"sparsity": {"1e-05": 81.38, "1e-08": 76.04}, "source": "Mukherjee et al. 2025, Table 1"}
    page = R.analysis_report(richer)
    assert "<h2>Patch size</h2>" in page and "12,345" in page
    assert "counterfactual.bfloat16.rounded.1e-05" in page and "0.999992" in page
    magnitude = figures_of(page)[4]  # after curve, heatmap, layer bars, ULP
    assert magnitude["data"][0]["y"] == [25.0, 50.0] and magnitude["data"][0]["x"] == ["2^-8", "2^-7"]
    assert "The study&#x27;s value for this pair" in page and "81.38 %" in page and "76.04 %" in page
    text = S.plain_summary(richer)
    assert "75.00 % of the 1,000 elements changed" in text and "250 changed after rounding" in text
    assert "Update rank averages 50.0 % of full" in text and "75.0 % by the float64 numerical rank" in text
    assert "about 12.3 KB, 25.00 % of the finetuned checkpoint's 49.4 KB" in text
    # a malformed extra block drops its sentence, never the report
    richer["summary"]["precision"] = ["not", "a", "mapping"]
    richer["summary"]["rank"] = {"mean": "n/a"}
    assert "Update rank" not in S.plain_summary(richer) and R.analysis_report(richer)


def test_overlap_compare_and_run_reports(demo_results):
    ov3 = demo_results["_overlap3"]
    page = R.overlap_report(ov3)
    assert len(figures_of(page)) == 3 and html.escape(S.overlap_summary(ov3)) in page
    items = [("rl_a", demo_results["rl_a"]), ("sft", demo_results["sft"])]
    page = R.compare_report(items, 1e-5)
    assert len(figures_of(page)) == 1
    assert all(html.escape(S.plain_summary(r)) in page for _, r in items)


def test_plain_summary_is_measured_numbers_beside_comparison_points(demo_results):
    for name in ("sft", "rl_a", "rl_b", "resized"):
        r = demo_results[name]
        text = S.plain_summary(r)
        s = r["summary"]["sparsity"]["1e-05"]
        assert f"{N.fmt_pct(s)} of the {N.fmt_int(r['summary']['numel'])} compared elements are unchanged" in text
        where = "inside" if 0.685 <= s <= 0.96 else ("above" if s > 0.96 else "below")
        assert f"{where} the study's RL range (68.5–96 %)" in text
        where = "inside" if 0.06 <= s <= 0.15 else ("above" if s > 0.15 else "below")
        assert f"{where} the study's SFT range (6–15 %)" in text
        assert f"Bit for bit (t = 0) {N.fmt_pct(r['summary']['sparsity']['0.0'])} are unchanged" in text
        densest = min(r["modules"], key=lambda m: 1 - m["changed"]["1e-05"] / m["numel"])
        assert f"most changed module type is {densest['module']}" in text
        assert ("Update rank averages" in text) == (r["summary"]["rank"]["mean"] is not None)
        assert ("direction-free" in text) == bool(r["summary"]["geometry"].get("matrices"))
        assert not re.search(r"LoRA|-like|\bRL finetune\b|\bis an? (RL|SFT)\b", text)
    g = demo_results["rl_a"]["summary"]["geometry"]
    i = g["q"].index(0.05)
    assert N.fmt_pct(g["energy"]["two_sided"][i], 3) in S.plain_summary(demo_results["rl_a"])
    assert N.fmt_pct(g["baseline"]["two_sided"][i], 3) in S.plain_summary(demo_results["rl_a"])
    ov = demo_results["_overlap2"]
    text = S.overlap_summary(ov)
    assert N.fmt_pct(ov["o1"]) in text and N.fmt_pct(ov["random_o1"]) in text and N.fmt_pct(ov["jaccard"]) in text


@pytest.fixture(scope="module")
def eighty_layers(tmp_path_factory):
    """An 80-layer Llama-shaped pair (tiny matrices: the report's size grows with tensors, not elements)."""
    root = tmp_path_factory.mktemp("eighty")
    gen = torch.Generator().manual_seed(0)
    shapes = {"self_attn.q_proj": (16, 16), "self_attn.k_proj": (8, 16), "self_attn.v_proj": (8, 16),
              "self_attn.o_proj": (16, 16), "mlp.gate_proj": (32, 16), "mlp.up_proj": (32, 16),
              "mlp.down_proj": (16, 32), "input_layernorm": (16,), "post_attention_layernorm": (16,)}
    base = {f"model.layers.{i}.{m}.weight": torch.randn(*s, generator=gen) for i in range(80) for m, s in shapes.items()}
    base |= {"model.embed_tokens.weight": torch.randn(64, 16, generator=gen), "model.norm.weight": torch.ones(16),
             "lm_head.weight": torch.randn(64, 16, generator=gen)}
    tuned = {k: v + (torch.rand(v.shape, generator=gen) < 0.2) * 1e-2 for k, v in base.items()}
    for name, state in (("base", base), ("tuned", tuned)):
        (root / name).mkdir()
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(root / name / "model.safetensors"))
    with open_source(parse_source(str(root / "base"), allow_any_path=True)) as b, \
            open_source(parse_source(str(root / "tuned"), allow_any_path=True)) as t:
        return analyze(b, t, AnalysisOptions(tolerance=1e-5, rank="sampled", geometry="sampled", device="cpu"))


def test_report_of_an_80_layer_model_stays_under_10_mb(eighty_layers):
    page = R.analysis_report(eighty_layers)
    size = len(page.encode())
    print(f"report of an 80-layer model ({len(eighty_layers['tensors'])} tensors): {size / 1e6:.2f} MB")
    assert size < 10e6
    heatmap = figures_of(page)[1]
    assert len({y for trace in heatmap["data"] for y in (trace.get("y") or [])}) >= 80  # every layer a row
