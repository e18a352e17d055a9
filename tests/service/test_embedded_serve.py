"""`subnetscope serve` with no REDIS_URL runs everything itself, persists, and cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from support.polling import wait_for
from support.service import VENV_BIN

from app.cli.embedded import free_port

pytestmark = pytest.mark.timeout(300)


def start_serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBNETSCOPE_") and k not in ("REDIS_URL", "HF_TOKEN")}
    env.update({"SUBNETSCOPE_DATA_DIR": str(data_dir), "SUBNETSCOPE_PORT": str(port), "SUBNETSCOPE_DEVICE": "cpu",
                "SUBNETSCOPE_DEMO_TRAINING": "off", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    with open(log, "ab") as out:
        return subprocess.Popen([str(VENV_BIN / "subnetscope"), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> dict:
    def ready() -> dict | None:
        r = httpx.get(f"{base}/api/health", timeout=2)
        return r.json() if r.status_code == 200 and r.json()["workers"] >= 1 else None

    return wait_for(ready, timeout, "serve to be ready", interval=0.2, ignore=(httpx.HTTPError,), proc=proc,
                    details=lambda: log.read_text()[-3000:])


def stop(proc: subprocess.Popen, sig: int) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    proc.wait(60)
    gone, alive = psutil.wait_procs(children, timeout=30)
    return alive


@pytest.mark.slow
def test_serve_with_no_redis_url_runs_everything_and_stops_cleanly(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    proc = start_serve(data_dir, port, log)
    try:
        wait_ready(base, proc, log)
        names = {p.name() for p in psutil.Process(proc.pid).children(recursive=True)}
        assert "redis-server" in names, names
        assert (data_dir / "checkpoints" / "demo" / "rl_a" / "model.safetensors").is_file()
        r = httpx.post(f"{base}/api/analyses", json={"base": "local:demo/base", "tuned": "local:demo/rl_a"})
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        deadline = time.monotonic() + 120
        while (body := httpx.get(f"{base}/api/analyses/{aid}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert body["status"] == "done", body["error"]
    finally:
        left = stop(proc, signal.SIGINT)  # Ctrl-C
    assert left == [], f"children left running after Ctrl-C: {left}"
    assert list((data_dir / "redis").glob("appendonly*")), "Redis did not persist with an append-only file"

    # A second start finds the result again: kept in our own keys, no expiry.
    proc = start_serve(data_dir, port, log)
    try:
        wait_ready(base, proc, log)
        again = httpx.get(f"{base}/api/analyses/{aid}").json()
        assert again["status"] == "done" and again["result"] == body["result"]
    finally:
        left = stop(proc, signal.SIGTERM)
    assert left == [], f"children left running after SIGTERM: {left}"
