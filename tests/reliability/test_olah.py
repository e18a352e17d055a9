"""Through a Hub server we did not write: olah (a self-hosted HF mirror), offline, serving git repos.

olah runs as its own process on loopback (tests/olahserver.py) and serves git repositories
this module builds with git and git-lfs: a base and a finetune, the finetune again as a
sharded index, and a run whose `step-*` branches are its checkpoints. The CLI and the
service read them through HF_ENDPOINT, and every count must equal the same checkpoints read
from local directories.

olah answers differently from huggingface.co; what it does and what the product does about
it (worker/engine/checkpoints/hub_http.py):
- `Range: bytes=0-7` gets 200 and the whole file (chunked, no Content-Length): each read
  streams the file from its start and keeps only its range; one warning per server.
- Its file list has no sizes (`?blobs=true` ignored): the size comes from a HEAD.
- No redirect for LFS files, an unquoted ETag, no X-Linked-Size: nothing depends on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from olahserver import GitRepo, OlahServer, commit_dir, tools_missing
from run_checkpoints import write_run
from safetensors.torch import save_file
from support.numbers import assert_same_numbers
from support.polling import wait_for_status
from support.service import start_service

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow, pytest.mark.skipif(tools_missing() is not None, reason=str(tools_missing()))]

SUBNETSCOPE = Path(sys.executable).parent / "subnetscope"
STEPS = (100, 200, 300)
RANGE_WARNING = "ignores HTTP range requests"


def save_sharded(directory: Path, state: dict[str, torch.Tensor], config_from: Path) -> Path:
    """The same tensors as two shards and an index, as transformers writes a large model."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: state[n].contiguous() for n in part}, str(directory / file))
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text((config_from / "config.json").read_text())
    return directory


@pytest.fixture(scope="module")
def olah(tmp_path_factory):
    root = tmp_path_factory.mktemp("olah")
    base, run, states = write_run(root / "local")
    sharded = save_sharded(root / "local" / "sharded", states[300], base)
    mirrors = root / "mirrors"
    commit_dir(GitRepo(mirrors / "models" / "org" / "base"), base)
    commit_dir(GitRepo(mirrors / "models" / "org" / "tuned"), run / "checkpoint-300")
    commit_dir(GitRepo(mirrors / "models" / "org" / "sharded"), sharded)
    repo = GitRepo(mirrors / "models" / "org" / "run")
    commit_dir(repo, base)
    for step in STEPS:
        commit_dir(repo, run / f"checkpoint-{step}", branch=f"step-{step}")
    with OlahServer(mirrors, root / "server") as server:
        yield server, {"base": base, "run": run, "sharded": sharded, "repo": repo, "root": root}


def cli(args: list[str], out: Path, endpoint: str, home: Path) -> tuple[dict, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env.pop(var, None)
    proc = subprocess.run([str(SUBNETSCOPE), *args, "--json", str(out), "--quiet", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stderr


def local_result(base: Path, tuned: Path) -> dict:
    """The analysis of two local directories, in this process, as `subnetscope analyze` computes it."""
    from worker.engine import AnalysisOptions, SourceSpec, analyze, open_source

    with open_source(SourceSpec("local", str(base))) as b, open_source(SourceSpec("local", str(tuned))) as t:
        return analyze(b, t, AnalysisOptions(tolerance=1e-5, device="cpu"))


@pytest.fixture(scope="module")
def local_dynamics(olah, tmp_path_factory):
    server, where = olah
    tmp = tmp_path_factory.mktemp("local-dynamics")
    return cli(["dynamics", str(where["base"]), str(where["run"])], tmp / "local.json", server.url, tmp / "hf")[0]


def numbers(result: dict) -> dict:
    """What an analysis found, without how its sides were named or how the run went."""
    out = {k: v for k, v in result.items() if k not in ("base", "tuned", "options", "engine_version")}
    out["summary"] = {k: v for k, v in result["summary"].items() if k not in ("seconds", "bytes_read", "device")}
    return json.loads(json.dumps(out), parse_constant=lambda c: None)


def test_cli_analyses_through_olah_equal_local(olah, tmp_path):
    server, where = olah
    run = where["run"]
    pairs = [  # (through olah, the same checkpoints on disk)
        (["org/base", "org/tuned"], [where["base"], run / "checkpoint-300"]),
        (["org/base", "org/sharded"], [where["base"], where["sharded"]]),
        (["org/run@step-100", "org/run@step-200"], [run / "checkpoint-100", run / "checkpoint-200"]),
    ]
    for i, (hub, local) in enumerate(pairs):
        through, stderr = cli(["analyze", *hub], tmp_path / f"olah-{i}.json", server.url, tmp_path / "hf")
        assert stderr.count(RANGE_WARNING) == 1, stderr[-2000:]  # said once, not once per read
        on_disk = local_result(*local)
        assert through["summary"]["changed"]["1e-05"] > 0
        assert_same_numbers(numbers(through), numbers(on_disk), f"{' vs '.join(hub)}", rel_tol=0.0)
        assert through["tuned"]["kind"] == "hub" and len(through["tuned"]["sha"]) == 40
    # @revision is pinned to the branch's git commit, as on the Hub
    assert through["base"]["sha"] == where["repo"].sha("step-100")
    assert through["tuned"]["sha"] == where["repo"].sha("step-200")


def test_cli_dynamics_of_step_branches_through_olah_equal_local(olah, local_dynamics, tmp_path):
    server, where = olah
    through, _ = cli(["dynamics", "org/run", "org/run", "--revisions", "step-*"], tmp_path / "olah.json",
                     server.url, tmp_path / "hf")
    on_disk = local_dynamics
    assert [c["name"] for c in through["checkpoints"]] == [f"step-{s}" for s in STEPS]
    assert [c["tuned"]["sha"] for c in through["checkpoints"]] == [where["repo"].sha(f"step-{s}") for s in STEPS]
    skip = {"name", "tuned", "analysis", "consecutive_analysis", "consecutive_from"}
    for got, want in zip(through["checkpoints"], on_disk["checkpoints"], strict=True):
        assert_same_numbers({k: v for k, v in got.items() if k not in skip},
                            {k: v for k, v in want.items() if k not in skip}, got["name"], rel_tol=0.0)
    assert_same_numbers(through["layers"], on_disk["layers"], "layers", rel_tol=0.0)
    assert through["numel"] == on_disk["numel"] and through["final"]["subnet"] == on_disk["final"]["subnet"]


def test_service_analyses_and_runs_through_olah_equal_local(olah, local_dynamics, tmp_path):
    server, where = olah
    local = local_result(where["base"], where["sharded"])
    svc = start_service(tmp_path / "svc", HF_ENDPOINT=server.url, HF_HUB_OFFLINE="0")
    try:
        r = svc.client.post("/api/analyses", json={"base": "org/base", "tuned": "org/sharded"})
        assert r.status_code == 202, r.text
        body = wait_for_status(svc.client, f"/api/analyses/{r.json()['id']}", timeout=300)
        assert body["status"] == "done", body.get("error")
        assert_same_numbers(numbers(body["result"]), numbers(local), "service result", rel_tol=0.0)

        r = svc.client.post("/api/runs", json={"base": "org/run", "run": "org/run", "revisions": "step-*"})
        assert r.status_code == 202, r.text
        run = wait_for_status(svc.client, f"/api/runs/{r.json()['id']}", timeout=300, interval=0.2)
        assert run["status"] == "done", run.get("error")
        got, want = run["result"]["checkpoints"], local_dynamics["checkpoints"]
        for key in ("changed", "ever_outside", "final_both", "o1", "o2"):
            assert [c[key] for c in got] == [c[key] for c in want], key
        assert [c["sha"] for c in run["checkpoints"]] == [where["repo"].sha(f"step-{s}") for s in STEPS]
        assert RANGE_WARNING in svc.log_text()
    finally:
        svc.close()


def test_unknown_revision_repo_and_refs_through_olah_are_named_as_on_the_hub(olah, monkeypatch):
    """olah answers an unknown revision as an unknown repo (401 RepoNotFound) and refs of an unknown
    repo with 404 EntryNotFound: the product still says which it is, and that the server answered."""
    from hubserver import use_endpoint
    from huggingface_hub import constants

    from worker.engine import EngineError, open_source, parse_source
    from worker.engine.checkpoints.training_run import list_run

    server, _ = olah
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    cases = [  # (how it is opened, code, words the message must hold)
        (lambda: open_source(parse_source("org/run@no-such-branch")), "revision_not_found",
         ("'no-such-branch' does not exist in org/run",)),
        (lambda: open_source(parse_source("org/none")), "not_found", ("org/none was not found",)),
        (lambda: list_run(parse_source("org/none"), revisions="step-*"), "not_found",
         ("did not list the branches and tags of org/none", "HTTP 404", server.url)),
    ]
    with use_endpoint(server.url):
        for open_it, code, words in cases:
            with pytest.raises(EngineError) as err:
                open_it()
            assert err.value.code == code, err.value.message
            assert all(w in err.value.message for w in words), err.value.message
            assert "network" not in err.value.message
