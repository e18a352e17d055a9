"""The one polling loop of the tests, and the waits built on it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx

FINAL = ("done", "failed")


def wait_for(check: Callable[[], object], timeout: float, what: str, *, interval: float = 0.05,
             ignore: tuple[type[BaseException], ...] = (), proc: subprocess.Popen | None = None,
             details: Callable[[], str] = str, error: type[Exception] = AssertionError):
    """Call `check` until it returns something truthy, and return that.

    ignore: exceptions that mean "not yet" (a server still starting); proc: a process that must not
    exit meanwhile; details(): text appended to the failure (a log tail); error: what is raised."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise error(f"{what}: process exited with {proc.returncode}\n{details()}")
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise error(f"timed out after {timeout}s waiting for {what}\n{details()}")


def wait_for_status(client: httpx.Client, path: str, statuses=FINAL, timeout: float = 120.0,
                    interval: float = 0.05) -> dict:
    """GET `path` (an analysis, overlap or training run) until its status is one of `statuses`."""
    last: dict = {}

    def reached() -> dict | None:
        r = client.get(path)
        assert r.status_code == 200, r.text
        last.update(body := r.json())
        return body if body["status"] in statuses else None

    return wait_for(reached, timeout, f"{path} to be {statuses}", interval=interval,
                    details=lambda: f"last: {last.get('status')} {last.get('progress')} {last.get('error')}")


def wait_status(client: httpx.Client, analysis_id: str, statuses=FINAL, timeout: float = 120.0,
                interval: float = 0.05) -> dict:
    return wait_for_status(client, f"/api/analyses/{analysis_id}", statuses, timeout, interval)


def wait_idle(svc, timeout: float = 120.0) -> None:
    """No analysis queued or running: counters read afterwards belong to the test alone."""
    wait_for(lambda: svc.redis.scard("subnetscope:running") == 0 and svc.redis.llen("rq:queue:subnetscope") == 0,
             timeout, "the service to be idle", interval=0.1)
