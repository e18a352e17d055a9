"""The CLI on the demo family, and overlap against brute-force set operations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker.engine import AnalysisOptions, analyze, load_masks, open_source, overlap, parse_source, write_demo

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
