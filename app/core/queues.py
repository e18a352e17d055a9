"""The RQ queue: what is enqueued, with which timeout and retries. Only ids travel in jobs."""

from __future__ import annotations

import json

from redis import Redis
from rq import Queue, Retry

from app.core.settings import Settings
from app.core.store import Store

# Transient Hub errors are retried with these waits (seconds); the scheduler runs them.
RETRY_INTERVALS = [5, 30, 120]

def job_timeout(settings: Settings, total_bytes: int) -> int:
    return max(600, int(total_bytes / 1e9 * settings.job_timeout_per_gb))


def queue_for(r: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue, connection=r)


def enqueue_analysis(r: Redis, settings: Settings, aid: str, total_bytes: int | None = None) -> None:
    """Put a run of `aid` on the queue; only the id travels in the job."""
    if total_bytes is None:
        raw = Store(r).get_raw(aid) or {}
        total_bytes = json.loads(raw.get("request") or "{}").get("total_bytes", 0)
    queue_for(r, settings).enqueue(
        "worker.tasks.run_analysis", aid,
        job_timeout=job_timeout(settings, total_bytes),
        retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
        result_ttl=0,  # our own keys hold the result
        failure_ttl=7 * 24 * 3600,
        description=f"analysis {aid}",
    )
