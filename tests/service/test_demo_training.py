"""`serve` trains the demo's trained family in the background: pages answer meanwhile, progress shows, and
the family appears all at once."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from support.polling import wait_for
from support.service import VENV_BIN

from app.cli import demo_training
from app.cli.embedded import free_port
from frontend.pages import home
from worker.demo import trained as T

TINY = replace(T.QUICK, pretrain_steps=4, sft_steps=2, sft_save_every=2, rl_steps=2, rl_save_every=2, eval_size=16)


def test_status_reads_the_file_and_the_folders(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    assert demo_training.status(demo)["state"] == "absent"
    demo_training.write_status(demo, state="training", percent=40.0, stage="RL")
    assert demo_training.status(demo) == {"state": "training", "percent": 40.0, "stage": "RL", "message": None}
    stale = json.loads((demo / demo_training.STATUS_FILE).read_text())
    stale["updated"] -= demo_training.STALE_SECONDS + 1
    (demo / demo_training.STATUS_FILE).write_text(json.dumps(stale))
    assert demo_training.status(demo)["state"] == "absent"  # the build that wrote it died
    demo_training.write_status(demo, state="failed", message="boom")
    assert demo_training.status(demo)["state"] == "failed" and demo_training.status(demo)["message"] == "boom"
    for name in demo_training.TRAINED_NAMES:
        (demo / name).mkdir(parents=True)
    assert demo_training.status(demo)["state"] == "ready"
    assert demo_training.start(tmp_path, "full") is None  # present: nothing to start
    assert demo_training.start(tmp_path / "elsewhere", "off") is None


def test_build_renames_into_place_and_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "QUICK", TINY)
    demo = tmp_path / "demo"
    (demo / ".trained-999").mkdir(parents=True)  # left by a killed build
    seen = []
    real = demo_training.write_status
    monkeypatch.setattr(demo_training, "write_status", lambda d, **f: (seen.append(f), real(d, **f)))
    assert demo_training.build(demo, "quick") == 0
    assert demo_training.present(demo) and demo_training.status(demo)["state"] == "ready"
    assert {p.name for p in demo.iterdir()} == {demo_training.LOCK_FILE, demo_training.STATUS_FILE, "trained"}
    percents = [f["percent"] for f in seen if f["state"] == "training"]
    assert percents[0] == 0.0 and percents == sorted(percents) and len(percents) > 2
    assert seen[-1]["state"] == "ready"


def test_a_second_builder_leaves_it_to_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "QUICK", TINY)
    demo = tmp_path / "demo"
    demo.mkdir()
    with open(demo / demo_training.LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert demo_training.build(demo, "quick") == 0
        assert not (demo / "trained").exists()


def test_home_shows_progress_then_the_trained_chips():
    text = str(home.trained_demo({"state": "training", "percent": 40.4, "stage": "RL"}))
    assert "training the demo: 40 % (RL)" in text
    assert home.trained_demo({"state": "absent"}) == []
    chips = home.trained_demo({"state": "ready"})[1].children
    assert [c.children for c in chips] == ["trained · SFT", "trained · RL"]
    for chip, (base, tuned, _) in zip(chips, home.TRAINED_PAIRS):
        assert home.EXAMPLES[chip.id["index"]][:2] == (base, tuned)


def test_home_runs_and_overlap_suggestions_use_the_trained_family():
    from frontend.pages import overlap

    assert home.trained_runs({"state": "training", "percent": 40.0}) == []
    chips = home.trained_runs({"state": "ready"})[1].children
    assert [c.children for c in chips] == ["SFT run", "RL run"]
    assert [home.TRAINED_RUNS[c.id["index"]][:2] for c in chips] == [
        ("local:demo/trained/base", "local:demo/trained/sft_run"),
        ("local:demo/trained/base", "local:demo/trained/rl_run")]
    assert {r for _, r, _ in home.TRAINED_RUNS} == {f"local:demo/{r}" for r in demo_training.RUNS}
    table = str(home.recent_runs_table([{"id": "abc", "status": "done", "run": "local:demo/trained/rl_run",
                                         "checkpoints": 8, "final": {"sparsity": 0.4686},
                                         "url": "/r/abc", "created_at": "2025-05-15T10:00:00Z"}]))
    assert "demo/trained/rl_run" in table and "/r/abc" in table and "46.86" in table
    assert "No training runs yet" in str(home.recent_runs_table([]))
    shown = [overlap.SUGGESTIONS[c.id["index"]] for c in overlap.suggestion_chips(True)]
    assert ("trained · SFT & RL", "local:demo/trained/base",
            ("local:demo/trained/sft", "local:demo/trained/rl")) in shown
    assert all("trained" not in label for label, _, _ in
               (overlap.SUGGESTIONS[c.id["index"]] for c in overlap.suggestion_chips(False)))


def start_serve(data_dir: Path, port: int, log: Path, mode: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SUBNETSCOPE_") and k not in ("REDIS_URL", "HF_TOKEN")}
    env.update({"SUBNETSCOPE_DATA_DIR": str(data_dir), "SUBNETSCOPE_PORT": str(port), "SUBNETSCOPE_DEVICE": "cpu",
                "SUBNETSCOPE_DEMO_TRAINING": mode, "SUBNETSCOPE_WEB_WORKERS": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    with open(log, "ab") as out:
        return subprocess.Popen([str(VENV_BIN / "subnetscope"), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_serving(check, timeout: float, proc: subprocess.Popen, log: Path):
    """Until `check()` is truthy (an HTTP error means not yet); fails at once if serve exits."""
    return wait_for(check, timeout, "serve", interval=0.2, ignore=(httpx.HTTPError,), proc=proc,
                    details=lambda: log.read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_answers_while_the_demo_trains(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    demo = data_dir / "checkpoints" / "demo"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    # full: a minute of training, so the service is up long before it ends.
    proc = start_serve(data_dir, port, log, "full")
    try:
        wait_serving(lambda: httpx.get(f"{base}/api/health", timeout=2).json()["workers"] >= 1, 120, proc, log)
        assert httpx.get(f"{base}/", timeout=5).status_code == 200
        training = wait_serving(lambda: (s := httpx.get(f"{base}/api/demo", timeout=2).json()["trained"])["state"]
                                == "training" and (s["percent"] or 0) > 0 and s, 60, proc, log)
        assert training["pairs"] == [] and training["mode"] == "full"
        assert not (demo / "trained").exists()
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], f"children left running: {[(p, p.cmdline()) for p in alive]}"
    # An ordered stop, not one by parent-death signals (Redis gone before the worker had stopped).
    stops = log.read_text()
    assert "stopping the embedded worker(s) and Redis" in stops and "worker(s) and Redis stopped" in stops, stops[-3000:]
    assert not [p for p in demo.glob(".trained-*") if p.is_dir()]  # nothing half-written stays
    assert not (demo / "trained").exists()
    assert demo_training.status(demo)["state"] == "absent"

    # The next start trains again (quick here) and the family appears whole.
    proc = start_serve(data_dir, port, log, "quick")
    try:
        wait_serving(lambda: httpx.get(f"{base}/api/health", timeout=2).json()["workers"] >= 1, 120, proc, log)
        ready = wait_serving(lambda: (s := httpx.get(f"{base}/api/demo", timeout=2).json()["trained"])["state"]
                             == "ready" and s, 120, proc, log)
        assert ready["pairs"][1] == {"base": "local:demo/trained/base", "tuned": "local:demo/trained/rl",
                                     "label": "trained · RL"}
        assert ready["runs"] == ["local:demo/trained/sft_run", "local:demo/trained/rl_run"]
        assert all((demo / n).is_dir() for n in demo_training.TRAINED_NAMES)
        r = httpx.post(f"{base}/api/analyses", json={"base": "local:demo/trained/base",
                                                     "tuned": "local:demo/trained/rl"})
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        body = wait_serving(lambda: (b := httpx.get(f"{base}/api/analyses/{aid}").json())["status"]
                            in ("done", "failed") and b, 120, proc, log)
        assert body["status"] == "done", body.get("error")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
