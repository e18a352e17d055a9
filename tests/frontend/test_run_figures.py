"""Run figures (frontend/figures/run.py) on a real dynamics result: the plotted numbers are the result's."""

from __future__ import annotations

import json

import pytest
from run_checkpoints import write_run

from app.cli.main import main as cli
from frontend.figures import run as RF
from frontend.pages import run as page


@pytest.fixture(scope="module")
def dynamics(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    base, run, _ = write_run(root)
    out = root / "dynamics.json"
    assert cli(["dynamics", str(base), str(run), "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    for i, c in enumerate(result["checkpoints"]):  # as the service fills them in
        c["analysis"], c["consecutive_analysis"] = f"{i:016x}", f"{i + 100:016x}"
    return result


def test_sparsity_and_consecutive_curves_plot_the_result_at_the_chosen_tolerance(dynamics):
    fig = RF.sparsity_vs_step(dynamics, 1e-4)
    line = fig.data[0]
    assert list(line.x) == [100, 200, 300]
    assert list(line.y) == pytest.approx([100 * c["sparsity"]["0.0001"] for c in dynamics["checkpoints"]])
    assert list(line.customdata) == [c["analysis"] for c in dynamics["checkpoints"]]
    cons = RF.consecutive_vs_step(dynamics, 0.0).data[0]
    assert list(cons.y) == pytest.approx([100 * c["consecutive"]["sparsity"]["0.0"] for c in dynamics["checkpoints"]])
    assert list(cons.customdata) == [c["consecutive_analysis"] for c in dynamics["checkpoints"]]


def test_ever_vs_final_and_heatmap(dynamics):
    fig = RF.ever_vs_final(dynamics)
    by_name = {trace.name.split(":")[0]: trace for trace in fig.data}
    assert list(by_name["ever-changed |E_i| / n"].y) == pytest.approx(
        [100 * c["ever_density"] for c in dynamics["checkpoints"]])
    assert list(by_name["o1 with final"].y)[-1] == pytest.approx(100.0)
    heat = RF.layer_step_heatmap(dynamics, 1e-5, "outside").data[0]
    rows = [r for r in dynamics["layers"] if r["layer"] is not None]
    assert len(heat.z) == len(rows) and len(heat.z[0]) == 3
    assert heat.z[1][2] == pytest.approx(100 * rows[1]["steps"][2]["outside_share"])
    assert heat.customdata[0][1] == dynamics["checkpoints"][1]["analysis"]
    cons = RF.layer_step_heatmap(dynamics, 1e-5, "consecutive").data[0]
    assert cons.z[0][2] == pytest.approx(100 * rows[0]["steps"][2]["consecutive_sparsity"]["1e-05"])
    assert cons.customdata[0][2] == dynamics["checkpoints"][2]["consecutive_analysis"]


def test_page_view_state_and_table(dynamics):
    assert page.view_state({"t": "1e-4", "hm": "ever"}) == (1e-4, "ever")
    assert page.view_state({"t": "3e-6", "hm": "nonsense"}) == (1e-5, "sparsity")  # only exact tolerances
    table = page.results_table(dynamics, 1e-5)
    rows = table.children[1].children
    assert len(rows) == 3
    links = rows[1].children[-1].children
    assert [link.href for link in links if hasattr(link, "href")] == [
        f"/a/{dynamics['checkpoints'][1]['analysis']}", f"/a/{dynamics['checkpoints'][1]['consecutive_analysis']}"]


def test_partial_figure_shows_finished_checkpoints_only():
    view = {"request": {"tolerance": 1e-5}, "checkpoints": [
        {"name": "checkpoint-10", "step": 10, "analysis": {"id": "a" * 16, "status": "done", "sparsity": 0.9}},
        {"name": "checkpoint-20", "step": 20, "analysis": {"id": "b" * 16, "status": "running", "sparsity": None}},
    ]}
    fig = RF.partial_sparsity(view)
    assert list(fig.data[0].x) == [10] and list(fig.data[0].y) == [pytest.approx(90.0)]
    assert "1 of 2" in fig.layout.title.text
