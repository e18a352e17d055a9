"""The notebook API (`import subnetscope`): the same numbers as the CLI's JSON, typed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_checkpoints import write_run

import subnetscope
from worker.demo.synthetic import write_demo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo"))


def test_import_is_light_and_public():
    # importing the package loads no engine (torch) and no dashboard: a notebook starts fast
    code = ("import sys, subnetscope; print(sorted(subnetscope.__all__)); "
            "print([m for m in ('torch', 'dash', 'plotly', 'redis') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         check=True).stdout.splitlines()
    assert "analyze" in out[0] and "report" in out[0] and out[1] == "[]"


def test_analyze_overlap_masks_and_report_match_the_cli(demo, tmp_path):
    cli = subprocess.run([str(Path(sys.executable).with_name("subnetscope")), "analyze", str(demo["base"]),
                          str(demo["rl_a"]), "--quiet", "--format", "json"], capture_output=True, text=True,
                         timeout=300, check=True)
    expected = json.loads(cli.stdout)
    a = subnetscope.analyze(str(demo["base"]), str(demo["rl_a"]), masks_dir=tmp_path / "a", progress=False)
    b = subnetscope.analyze(str(demo["base"]), str(demo["rl_b"]), masks_dir=tmp_path / "b", progress=False)
    assert isinstance(a, subnetscope.AnalysisResult)
    assert a.data["summary"]["changed"] == expected["summary"]["changed"]
    assert a.data["tensors"] == expected["tensors"]
    assert a.sparsity == expected["summary"]["sparsity"]["1e-05"] and a.numel == expected["summary"]["numel"]
    assert a.changed[0.0] == expected["summary"]["changed"]["0.0"] and a.tolerance == 1e-5
    assert "compared elements are unchanged" in a.summary_text
    top = a.top_tensors(3)
    assert len(top) == 3 and top[0].sparsity <= top[1].sparsity <= top[2].sparsity
    masks = subnetscope.load_masks(a)
    name = top[0].name
    assert masks[name].dtype == torch.bool and int(masks[name].sum()) == top[0].changed
    ov = subnetscope.overlap([a, b], labels=["a", "b"])
    assert isinstance(ov, subnetscope.OverlapResult) and ov.labels == ["a", "b"]
    assert ov.data["a_changed"] == a.changed[1e-5] and ov.numel == a.numel
    ran = subnetscope.overlap(str(demo["base"]), [str(demo["rl_a"]), str(demo["rl_b"])], labels=["a", "b"],
                              progress=False)
    assert {k: v for k, v in ran.data.items() if k != "labels"} == {k: v for k, v in ov.data.items() if k != "labels"}
    page = subnetscope.report(a, tmp_path / "a.html", overlap=ov)
    assert (tmp_path / "a.html").read_text() == page and "Subnetwork overlap" in page
    with pytest.raises(TypeError, match="placement"):
        subnetscope.analyze(str(demo["base"]), str(demo["rl_a"]), tolerence=1e-5)


def test_dynamics(tmp_path):
    base_dir, run_dir, _ = write_run(tmp_path / "run")
    d = subnetscope.dynamics(str(base_dir), str(run_dir), progress=False)
    assert isinstance(d, subnetscope.DynamicsResult)
    assert [c.step for c in d.checkpoints] == [100, 200, 300]
    assert d.checkpoints[-1].o1 == pytest.approx(1.0) and d.numel == d.data["numel"]
