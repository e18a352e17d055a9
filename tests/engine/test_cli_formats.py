"""The CLI's --format json|table on analyze, overlap and dynamics, --top N with the per-module
table, and `subnetscope report` on an analysis, an overlap and a training run."""

from __future__ import annotations

import json

import pytest
from run_checkpoints import write_run

from app.cli.main import main as cli
from worker.demo.synthetic import write_demo

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo"))


def run(capsys, *args) -> tuple[int, str]:
    code = cli([str(a) for a in args])
    return code, capsys.readouterr().out


def test_analyze_formats_and_top(demo, tmp_path, capsys):
    code, out = run(capsys, "analyze", demo["base"], demo["rl_a"], "--quiet", "--format", "json",
                    "--json", tmp_path / "r.json")
    assert code == 0
    result = json.loads(out)
    assert result == json.loads((tmp_path / "r.json").read_text())  # stdout is the document --json writes
    code, out = run(capsys, "analyze", demo["base"], demo["rl_a"], "--quiet", "--top", "3")
    assert code == 0
    top = out.split("top 3 tensors by changed share at t = 1e-05\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    by_share = sorted(result["tensors"], key=lambda r: (-r["changed"]["1e-05"] / r["numel"], -r["numel"], r["name"]))
    assert [line.split()[0] for line in top] == [r["name"] for r in by_share[:3]]
    assert len(result["tensors"]) > 3
    modules = out.split("per module type at t = 1e-05 (most changed first)\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert sorted(line.split()[0] for line in modules) == sorted(m["module"] for m in result["modules"])
    first = max(result["modules"], key=lambda m: m["changed"]["1e-05"] / m["numel"])
    assert modules[0].split()[0] == first["module"]
    assert "compared elements are unchanged (update sparsity)" in out  # the plain summary
    code, out = run(capsys, "analyze", demo["base"], demo["rl_a"], "--quiet", "--top", "0")
    assert code == 0 and "top " not in out and "per module type" not in out


def test_overlap_and_report_commands(demo, tmp_path, capsys):
    code, out = run(capsys, "overlap", demo["base"], demo["rl_a"], demo["rl_b"], "--quiet", "--format", "json",
                    "--json", tmp_path / "ov.json")
    assert code == 0
    ov = json.loads(out)
    assert ov == json.loads((tmp_path / "ov.json").read_text()) and ov["labels"] == [str(demo["rl_a"]), str(demo["rl_b"])]
    code, out = run(capsys, "overlap", demo["base"], demo["rl_a"], demo["rl_b"], "--quiet")
    assert code == 0 and "Jaccard" in out and "if they were placed at random" in out
    assert run(capsys, "analyze", demo["base"], demo["rl_a"], "--quiet", "--json", tmp_path / "a.json")[0] == 0
    code, out = run(capsys, "report", tmp_path / "a.json", "--overlap", tmp_path / "ov.json", "-o", tmp_path / "a.html")
    assert code == 0 and out.startswith(str(tmp_path / "a.html"))
    page = (tmp_path / "a.html").read_text()
    assert "Subnetwork overlap" in page and "<h2>Per module type" in page
    code, out = run(capsys, "report", tmp_path / "ov.json")
    assert code == 0 and (tmp_path / "ov.html").exists()
    # an overlap cannot take another overlap; a file that is no result is refused in one line
    (tmp_path / "junk.json").write_text('{"hello": 1}')
    assert run(capsys, "report", tmp_path / "junk.json")[0] == 2
    assert run(capsys, "report", tmp_path / "ov.json", "--overlap", tmp_path / "ov.json")[0] == 2


def test_dynamics_formats_and_run_report(tmp_path, capsys):
    base_dir, run_dir, _ = write_run(tmp_path / "run")
    code, out = run(capsys, "dynamics", base_dir, run_dir, "--quiet", "--format", "json", "--json", tmp_path / "d.json")
    assert code == 0
    dyn = json.loads(out)
    assert dyn == json.loads((tmp_path / "d.json").read_text()) and len(dyn["checkpoints"]) == 3
    code, out = run(capsys, "dynamics", base_dir, run_dir, "--quiet")
    assert code == 0 and "checkpoint-300" in out and not out.lstrip().startswith("{")
    code, out = run(capsys, "report", tmp_path / "d.json", "-o", tmp_path / "d.html")
    assert code == 0 and "checkpoint-300" in (tmp_path / "d.html").read_text()
