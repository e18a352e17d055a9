"""When a training run's reduce is queued: once all its analyses are done, whoever notices first.

Checked at the end of each analysis (worker/tasks.py) and, as a safety net, by the janitor
(worker/janitor.py), which also re-queues a reduce whose worker died. Submission and the GET
body live in app/web/training_runs.py; the reduce itself in worker/training_runs.py.
"""

from __future__ import annotations

import json
import logging
import time

from app.core.queues import queue_for
from app.core.settings import Settings
from app.core.store import DONE, FAILED, MAX_LOST_ATTEMPTS, Store

log = logging.getLogger(__name__)

REDUCE_TIMEOUT_S = 3600
# A reduce queued this long without starting is queued again (its job may be lost).
REDUCE_LOST_AFTER_S = 900


def analysis_ids(request: dict) -> list[str]:
    """Distinct analyses of a run: every (base, c_i) first, then the consecutive updates."""
    cps = request.get("checkpoints") or []
    ids = [c["analysis"] for c in cps] + [c["consecutive"] for c in cps]
    return list(dict.fromkeys(ids))


def maybe_reduce(store: Store, settings: Settings, rid: str) -> bool:
    """Queue the run's reduce when all its analyses are done (once, whoever asks)."""
    raw = store.get_training_run(rid)
    if raw is None or raw.get("status") != "queued":
        return False
    ids = analysis_ids(json.loads(raw["request"]))
    states = store.analysis_states(ids)
    if not all(fields is not None and fields.get("status") == DONE for fields, _ in states.values()):
        return False
    if not store.queue_reduce(rid):
        return False
    queue_for(store.r, settings).enqueue("worker.tasks.run_dynamics", rid, job_timeout=REDUCE_TIMEOUT_S,
                                         result_ttl=0, failure_ttl=7 * 24 * 3600, description=f"training run {rid}")
    return True


def analysis_finished(store: Store, settings: Settings, aid: str) -> None:
    """Called at the end of every analysis: reduce the runs that were waiting for it, if complete."""
    for rid in store.runs_waiting_on(aid):
        maybe_reduce(store, settings, rid)


def lost_reduce_error(rid: str) -> str:
    return json.dumps({"code": "worker_lost", "message": (
        f"The worker reducing this run died {MAX_LOST_ATTEMPTS} times; POST /api/runs/{rid}/retry runs it again.")})


def sweep(store: Store, settings: Settings) -> None:
    """The janitor's pass over unfinished runs: queue complete ones, re-queue a reduce whose worker died."""
    for rid in store.pending_training_runs():
        raw = store.get_training_run(rid)
        if raw is None or raw.get("status") in (DONE, FAILED):
            store.forget_pending(rid)
            continue
        if raw["status"] == "reducing" and not store.reducer_alive(rid):
            started = raw.get("reduce_started_at")
            queued_at = float(raw.get("reduce_queued_at") or 0)
            if started or time.time() - queued_at > REDUCE_LOST_AFTER_S:
                if store.requeue_reduce(rid, lost_reduce_error(rid)):
                    log.warning("training run %s lost its reducer; queued again", rid)
        maybe_reduce(store, settings, rid)
