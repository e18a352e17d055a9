"""The CLI on the demo family, and overlap against brute-force set operations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker.demo.synthetic import write_demo
from worker.engine import AnalysisOptions, EngineError, analyze, load_masks, open_source, overlap, parse_source

CLI = [str(Path(sys.executable).with_name("subnetscope"))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo"))


def cli(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_demo_family_shows_dense_sft_and_sparse_rl(demo, tmp_path):
    out = {}
    for name in ("sft", "rl_a"):
        proc = cli("analyze", demo["base"], demo[name], "--json", tmp_path / f"{name}.json", "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert "1e-05" in proc.stdout and "sparsity" in proc.stdout
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert out["sft"]["summary"]["sparsity"]["1e-05"] < 0.15  # SFT: nearly every weight moved
    assert 0.7 < out["rl_a"]["summary"]["sparsity"]["1e-05"] < 0.95  # RL: 5-30% moved
    r = out["rl_a"]
    assert set(r["summary"]["changed"]) == {"0.0", "1e-08", "1e-07", "1e-06", "1e-05", "0.0001", "0.001"}
    assert {"name", "shape", "dtype", "numel", "layer", "module", "changed"} <= set(r["tensors"][0])
    assert set(r["unmatched"]) >= {"only_base", "only_tuned", "shape_mismatch"}
    # every layer is touched: the subnetwork is spread, not concentrated
    assert all(l["sparsity"]["1e-05"] < 0.95 for l in r["layers"] if l["layer"] is not None)


def test_resized_demo_reports_added_rows(demo, tmp_path):
    proc = cli("analyze", demo["base"], demo["resized"], "--json", tmp_path / "r.json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["summary"]["added"] == 2 * 8 * 128
    assert "resized" in proc.stdout


def test_cli_errors_are_one_clear_line(tmp_path):
    proc = cli("analyze", tmp_path / "missing", tmp_path / "missing2", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error [not_found]") and "Traceback" not in proc.stderr


def test_overlap_matches_set_operations_on_masks(demo, tmp_path):
    files = []
    for name in ("rl_a", "rl_b", "sft"):
        with open_source(parse_source(str(demo["base"]), allow_any_path=True)) as b, open_source(
            parse_source(str(demo[name]), allow_any_path=True)
        ) as u:
            analyze(b, u, AnalysisOptions(device="cpu"), masks_dir=tmp_path / name)
        files.append(tmp_path / name / "masks.safetensors")
    masks = [load_masks(f) for f in files]
    flat = [torch.cat([m[k].flatten() for k in sorted(m)]) for m in masks]
    a, b, c = flat
    two = overlap(files[:2], labels=["rl_a", "rl_b"])
    n = a.numel()
    assert two["numel"] == n
    assert two["both"] == int((a & b).sum()) and two["a_changed"] == int(a.sum())
    assert two["o1"] == pytest.approx(int((a & b).sum()) / int(a.sum()))
    assert two["jaccard"] == pytest.approx(int((a & b).sum()) / int((a | b).sum()))
    assert two["random_o1"] == pytest.approx(int(b.sum()) / n)
    assert two["o1"] > 2 * two["random_o1"]  # the demo's RL runs share a core
    three = overlap(files)
    v = three["venn"]
    assert v["111"] == int((a & b & c).sum()) and v["100"] == int((a & ~b & ~c).sum())
    assert v["011"] == int((~a & b & c).sum())
    assert sum(v.values()) == int((a | b | c).sum())
    assert three["pairs"]["bc"]["both"] == int((b & c).sum())
    assert sum(l["numel"] for l in two["layers"]) == n


def test_cli_overlap(demo, tmp_path):
    proc = cli("overlap", demo["base"], demo["rl_a"], demo["rl_b"], "--json", tmp_path / "o.json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    o = json.loads((tmp_path / "o.json").read_text())
    assert {"numel", "a_changed", "b_changed", "both", "o1", "o2", "jaccard", "random_o1", "random_o2"} <= set(o)
    assert "Jaccard" in proc.stdout


def _analyse_to_masks(base_dir, tuned_dir, masks_dir):
    with open_source(parse_source(str(base_dir), allow_any_path=True)) as b, open_source(
        parse_source(str(tuned_dir), allow_any_path=True)
    ) as u:
        return analyze(b, u, AnalysisOptions(device="cpu"), masks_dir=masks_dir)


def test_overlap_reports_the_tensors_it_cannot_intersect(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(2)
    bf = lambda *s: (torch.randn(*s, generator=g) * 1e-3).to(torch.bfloat16)  # noqa: E731
    base = {"model.layers.0.mlp.up_proj.weight": bf(6, 5), "model.embed_tokens.weight": bf(5, 3), "model.norm.weight": bf(7)}
    # a: everything; b: a shrunk vocabulary (compared shape 4x3, not 5x3) and no norm
    tuned_a = {k: (v.float() + bf(*v.shape).float()).to(torch.bfloat16) for k, v in base.items()}
    tuned_b = {"model.layers.0.mlp.up_proj.weight": (base["model.layers.0.mlp.up_proj.weight"].float() + bf(6, 5).float()).to(torch.bfloat16),
               "model.embed_tokens.weight": bf(4, 3)}
    files = []
    for name, state in (("base", base), ("a", tuned_a), ("b", tuned_b)):
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "model.safetensors"))
    for name in ("a", "b"):
        _analyse_to_masks(tmp_path / "base", tmp_path / name, tmp_path / f"m_{name}")
        files.append(tmp_path / f"m_{name}" / "masks.safetensors")
    result = overlap(files, labels=["a", "b"])
    assert sorted(result["unmatched"], key=lambda u: u["name"]) == [
        {"name": "model.embed_tokens.weight", "reason": "shape_mismatch", "shapes": [[5, 3], [4, 3]]},
        {"name": "model.norm.weight", "reason": "missing", "shapes": [[7], None]},
    ]
    assert len(result["warnings"]) == 1 and "2 tensors could not be intersected" in result["warnings"][0]
    # counts cover only the tensor both masks hold
    a = load_masks(files[0])["model.layers.0.mlp.up_proj.weight"]
    b = load_masks(files[1])["model.layers.0.mlp.up_proj.weight"]
    assert result["numel"] == 30 and sum(l["numel"] for l in result["layers"]) == 30
    assert (result["a_changed"], result["b_changed"], result["both"]) == (int(a.sum()), int(b.sum()), int((a & b).sum()))
    assert overlap(files[:1] * 2, labels=["a", "a2"])["unmatched"] == []


def test_tolerance_must_be_finite_and_non_negative_everywhere(demo, tmp_path):
    for args in (["analyze", demo["base"], demo["rl_a"], "--tolerance", "nan"],
                 ["analyze", demo["base"], demo["rl_a"], "--tolerance", "inf"],
                 ["analyze", demo["base"], demo["rl_a"], "--tolerance=-1e-5"],
                 ["overlap", demo["base"], demo["rl_a"], demo["rl_b"], "--tolerance=-inf"]):
        proc = cli(*args, "--quiet")
        assert proc.returncode == 2, args
        assert "finite number >= 0" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for bad in (float("nan"), float("inf"), -1e-5):
        with pytest.raises(EngineError) as err:
            AnalysisOptions(tolerance=bad)
        assert err.value.code == "bad_request"
    # The API body: JSON NaN/Infinity (which the stdlib parser accepts) and negatives are refused by the schema.
    from pydantic import ValidationError

    from app.web.schemas import AnalysisRequest

    for text in ("NaN", "Infinity", "-Infinity", "-1e-05"):
        with pytest.raises(ValidationError):
            AnalysisRequest.model_validate(json.loads(f'{{"base": "a/b", "tuned": "a/c", "tolerance": {text}}}'))
    assert AnalysisRequest.model_validate({"base": "a/b", "tuned": "a/c", "tolerance": 0}).tolerance == 0.0
