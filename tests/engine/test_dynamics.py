"""Training dynamics (worker/engine/checkpoints/training_run.py, dynamics.py, `subnetscope dynamics`) against a float64 reference.

A 3-checkpoint run in the HF Trainer layout is written with safetensors (plus optimizer and
scheduler pickles that must never be read); the reference recomputes every number from the
checkpoints with torch float64 (tests/engine/run_checkpoints.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from run_checkpoints import CONFIG, base_state, reference, save, write_run

from app.cli.main import main as cli
from worker.engine import EngineError
from worker.engine.checkpoints.training_run import plan_run, select, step_of

pytestmark = pytest.mark.timeout(300)

T = 1e-5


def close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    base_dir, run_dir, states = write_run(root)
    return base_dir, run_dir, states


@pytest.fixture(scope="module")
def dynamics(run, tmp_path_factory):
    base_dir, run_dir, _ = run
    out = tmp_path_factory.mktemp("out") / "dynamics.json"
    assert cli(["dynamics", str(base_dir), str(run_dir), "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    return json.loads(out.read_text())


def test_numbers_equal_the_float64_reference(run, dynamics):
    _, _, states = run
    ref = reference([states["base"], states[100], states[200], states[300]], T)
    res = dynamics
    assert res["numel"] == ref["numel"]
    assert [c["name"] for c in res["checkpoints"]] == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert [c["step"] for c in res["checkpoints"]] == [100, 200, 300]
    for got, want in zip(res["checkpoints"], ref["checkpoints"]):
        for key in ("subnet", "ever_changed", "ever_outside", "final_both"):
            assert got[key] == want[key], key
        for key in ("outside_share", "o1", "o2", "random_o1", "random_o2", "ever_density", "subnet_density"):
            assert close(got[key], want[key]), (key, got[key], want[key])
        assert got["sparsity"].keys() >= want["sparsity"].keys()
        for tol, s in want["sparsity"].items():
            assert close(got["sparsity"][tol], s), (tol, got["sparsity"][tol], s)
            assert close(got["consecutive"]["sparsity"][tol], want["consecutive"][tol]), tol
    # the sets are not trivial: something was touched and then put back, and the sets differ
    assert 0 < res["checkpoints"][-1]["ever_outside"] < res["checkpoints"][-1]["ever_changed"]
    assert res["checkpoints"][0]["o1"] < 1
    assert res["checkpoints"][-1]["o1"] == 1.0 and res["checkpoints"][-1]["o2"] == 1.0


def test_per_layer_numbers_equal_the_reference(run, dynamics):
    _, _, states = run
    ref = reference([states["base"], states[100], states[200], states[300]], T)
    rows = {(r["stack"], r["layer"]): r for r in dynamics["layers"]}
    assert list(rows) == list(ref["layers"])  # ordered by stack, layer; outside-stack last
    for key, want_steps in ref["layers"].items():
        got_steps = rows[key]["steps"]
        assert len(got_steps) == 3
        for got, want in zip(got_steps, want_steps):
            for name in ("subnet", "ever_changed", "ever_outside", "final_both"):
                assert got[name] == want[name], (key, name)
            for name in ("outside_share", "o1", "o2"):
                assert close(got[name], want[name]), (key, name)
            for tol, s in want["sparsity"].items():
                assert close(got["sparsity"][tol], s), (key, tol)
                assert close(got["consecutive_sparsity"][tol], want["consecutive"][tol]), (key, tol)


def test_cli_prints_a_table_and_pattern_and_list_choose_checkpoints(run, tmp_path, capsys):
    base_dir, run_dir, states = run
    out = tmp_path / "two.json"
    assert cli(["dynamics", str(base_dir), str(run_dir), "--revisions", "checkpoint-300,checkpoint-100",
                "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "checkpoint-100" in text and "checkpoint-300" in text and "checkpoint-200" not in text
    assert "ever-chg" in text and "o1 final" in text
    res = json.loads(out.read_text())
    assert [c["step"] for c in res["checkpoints"]] == [100, 300]  # ordered by step, not as listed
    ref = reference([states["base"], states[100], states[300]], T)
    assert [c["ever_changed"] for c in res["checkpoints"]] == [c["ever_changed"] for c in ref["checkpoints"]]
    # consecutive update of checkpoint-300 is from checkpoint-100 here
    for tol, s in ref["checkpoints"][1]["consecutive"].items():
        assert close(res["checkpoints"][1]["consecutive"]["sparsity"][tol], s)


def test_base_defaults_to_the_first_checkpoint(run, tmp_path, capsys):
    _, run_dir, states = run
    out = tmp_path / "first.json"
    assert cli(["dynamics", str(run_dir), "--json", str(out), "--quiet", "--tolerance", "0"]) == 0
    res = json.loads(out.read_text())
    assert [c["name"] for c in res["checkpoints"]] == ["checkpoint-200", "checkpoint-300"]
    assert res["run"]["base_name"] == "checkpoint-100"
    ref = reference([states[100], states[200], states[300]], 0.0)
    assert [c["subnet"] for c in res["checkpoints"]] == [c["subnet"] for c in ref["checkpoints"]]
    assert "checkpoint-100 of the run" in capsys.readouterr().out


def test_step_numbers_and_selection():
    assert step_of("checkpoint-500") == 500 and step_of("global_step200") == 200
    assert step_of("run1-step-0300") == 300 and step_of("main") is None
    names = ["main", "step-1000", "step-200", "step-30", "v2"]
    assert select(names, None, where="x", default="d") == ["v2", "step-30", "step-200", "step-1000"]
    assert select(names, "step*", where="x", default="d") == ["step-30", "step-200", "step-1000"]
    assert select(names, "*", where="x", default="d") == ["v2", "step-30", "step-200", "step-1000"]  # main has no step
    assert select(names, "main,v2", where="x", default="d") == ["main", "v2"]  # given order when one has no step


@pytest.mark.parametrize("args, code, words", [
    (["--revisions", "step*"], "revision_not_found", "matches no checkpoint"),
    (["--revisions", "checkpoint-100,checkpoint-999"], "revision_not_found", "checkpoint-999"),
    (["--revisions", "checkpoint-200"], "bad_request", "at least 2 checkpoints"),
    (["--max-checkpoints", "2"], "bad_request", "more than the limit of 2"),
])
def test_bad_runs_are_refused_with_a_clear_message(run, capsys, args, code, words):
    base_dir, run_dir, _ = run
    assert cli(["dynamics", str(base_dir), str(run_dir), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert f"error [{code}]" in err and words in err


def test_a_run_of_one_checkpoint_without_base_is_refused(tmp_path):
    save(tmp_path / "run" / "checkpoint-1", base_state())
    save(tmp_path / "run" / "checkpoint-2", base_state(4))
    with pytest.raises(EngineError) as exc:
        plan_run(None, str(tmp_path / "run"), allow_any_path=True)
    assert exc.value.code == "bad_request" and "after its first (checkpoint-1)" in exc.value.message


def test_a_directory_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "run" / "logs").mkdir(parents=True)
    with pytest.raises(EngineError) as exc:
        plan_run(None, str(tmp_path / "run"), allow_any_path=True)
    assert exc.value.code == "not_found" and "checkpoint-<step>" in exc.value.message


def test_checkpoints_of_different_architectures_are_refused_before_any_weight(tmp_path, capsys):
    base = base_state()
    save(tmp_path / "base", base)
    save(tmp_path / "run" / "checkpoint-1", base)
    wider = dict(base)
    wider["model.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 32, dtype=torch.bfloat16)
    save(tmp_path / "run" / "checkpoint-2", wider)
    save(tmp_path / "run" / "checkpoint-3", base)
    assert cli(["dynamics", str(tmp_path / "base"), str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error [arch_mismatch]" in err and "checkpoint-2" in err and "mlp.up_proj" in err
    # another model type in the run
    save(tmp_path / "run" / "checkpoint-2", base, config={**CONFIG, "model_type": "mistral",
                                                          "architectures": ["MistralForCausalLM"]})
    assert cli(["dynamics", str(tmp_path / "base"), str(tmp_path / "run"), "--quiet"]) == 2
    assert "error [arch_mismatch]" in capsys.readouterr().err


# --- a Hub repo whose branches and tags are the checkpoints (tests/hubserver.py) ---------------

@pytest.fixture
def hub_run(tmp_path, hf_env):
    from hubserver import HubServer

    _, _, states = write_run(tmp_path / "local")
    repos = tmp_path / "repos"
    save(repos / "org" / "run", states["base"])  # main: the base
    for step in (100, 200, 300):
        save(repos / "org" / f"run@step-{step}", states[step], trainer_files=True)
    save(repos / "org" / "run@other", states[100])
    server = HubServer(repos)
    server.tags["org/run"] = {"step-300"}  # a tag, not a branch
    with server, server.endpoint():
        yield server, states


def test_hub_refs_endpoint_answers_like_the_hub(hub_run):
    from huggingface_hub import HfApi

    hub, _ = hub_run
    refs = HfApi(endpoint=hub.url).list_repo_refs("org/run")
    assert sorted(b.name for b in refs.branches) == ["main", "other", "step-100", "step-200"]
    assert [(t.name, t.ref) for t in refs.tags] == [("step-300", "refs/tags/step-300")]
    assert all(b.target_commit == hub.commit_sha("org/run", b.name) for b in refs.branches)


def test_hub_run_of_step_branches_and_tags_equals_the_reference(hub_run, tmp_path, capsys):
    hub, states = hub_run
    out = tmp_path / "hub.json"
    assert cli(["dynamics", "org/run", "org/run", "--revisions", "step*", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert [c["name"] for c in res["checkpoints"]] == ["step-100", "step-200", "step-300"]
    # every checkpoint pinned to the commit its ref pointed at
    assert [c["tuned"]["sha"] for c in res["checkpoints"]] == [hub.commit_sha("org/run", f"step-{s}")
                                                               for s in (100, 200, 300)]
    assert [c["tuned"]["revision"] for c in res["checkpoints"]] == ["step-100", "step-200", "step-300"]
    ref = reference([states["base"], states[100], states[200], states[300]], T)
    for got, want in zip(res["checkpoints"], ref["checkpoints"]):
        assert (got["subnet"], got["ever_changed"], got["ever_outside"], got["final_both"]) == (
            want["subnet"], want["ever_changed"], want["ever_outside"], want["final_both"])
    # the optimizer pickles beside the weights were never downloaded
    assert not [r for r in hub.requests if r.file and r.file.endswith((".pt", ".pth", ".bin"))]
    # the default selection (refs with a step number) includes no `main` and no `other`
    assert cli(["dynamics", "org/run", "org/run", "--quiet", "--json", str(out)]) == 0
    assert [c["name"] for c in json.loads(out.read_text())["checkpoints"]] == ["step-100", "step-200", "step-300"]
    assert cli(["dynamics", "org/run", "org/run", "--revisions", "ckpt-*", "--quiet"]) == 2
    assert "matches no checkpoint of Hub repo org/run" in capsys.readouterr().err
    assert cli(["dynamics", "org/run", "org/missing", "--quiet"]) == 2
    assert "error [not_found]" in capsys.readouterr().err
