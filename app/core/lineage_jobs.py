"""Lineage requests ("which candidate is the parent?"): their state in Redis and their job.

A request {tuned, candidates, budget, seed} is named by a content id of those fields, so the
same question is asked once; its state is the hash `subnetscope:lineage:<id>` {status, request,
result, error, updated_at}. Sources are public Hub repos or local checkpoints under the
server's root (checked by the worker when it opens them); no token is ever stored.
"""

from __future__ import annotations

import json
import time

from redis import Redis

from app.core.ids import content_id
from app.core.queues import queue_for
from app.core.settings import Settings

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
MAX_CANDIDATES = 8


def lineage_key(job_id: str) -> str:
    return f"subnetscope:lineage:{job_id}"


def get_lineage(r: Redis, job_id: str) -> dict | None:
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in r.hgetall(lineage_key(job_id)).items()}
    if not raw:
        return None
    return {"id": job_id, "status": raw.get("status"), "request": json.loads(raw.get("request") or "{}"),
            "result": json.loads(raw["result"]) if raw.get("result") else None,
            "error": json.loads(raw["error"]) if raw.get("error") else None}


def set_lineage(r: Redis, job_id: str, **fields) -> None:
    values = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()}
    r.hset(lineage_key(job_id), mapping={**values, "updated_at": str(time.time())})


def submit_lineage(r: Redis, settings: Settings, tuned: str, candidates: list[str], budget: float,
                   seed: int) -> dict:
    """Queue the request unless the same one is queued, running or done; its state."""
    request = {"tuned": tuned, "candidates": candidates, "budget": budget, "seed": seed}
    job_id = content_id("lineage", json.dumps(request, sort_keys=True))
    key = lineage_key(job_id)
    # Only the request that moves the hash into "queued" enqueues (a failed one is asked again).
    created = r.hsetnx(key, "status", QUEUED)
    if not created:
        state = get_lineage(r, job_id)
        if state is None or state["status"] != FAILED:
            return state or {"id": job_id, "status": QUEUED}
        r.hset(key, mapping={"status": QUEUED, "error": ""})
    set_lineage(r, job_id, request=request)
    queue_for(r, settings).enqueue("worker.lineage_jobs.run_lineage", job_id, job_timeout=1800, result_ttl=0,
                                   failure_ttl=7 * 24 * 3600, description=f"lineage {job_id}")
    return get_lineage(r, job_id)
