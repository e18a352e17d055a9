"""One analysis over many workers: when to fan out, the jobs, and the janitor's sweep.

An analysis whose pair is larger than `SUBNETSCOPE_FANOUT_BYTES` is run like this
(worker/tasks.py holds the three task functions, the engine does the work):

1. `run_analysis` (the ordinary job, any worker) claims the analysis as usual, opens both
   checkpoints (headers only) and splits the compared tensors into groups of about
   `SUBNETSCOPE_FANOUT_GROUP_BYTES` (worker.engine.tensor_groups.tensor_groups), recorded once in
   Redis; then it enqueues one `run_group(id, k)` job per group and returns. The analysis
   stays `running`.
2. Any worker on the same Redis, on any machine, takes a group: `analyze_part(only=group)`
   writes its mask parts into the analysis's artifact directory (app/core/artifacts.py: the shared
   volume) and pushes each finished tensor record to the analysis's record list, like a
   single run. The group's run holds its own liveness key; a run that dies leaves its
   finished records behind, and the next run of that group resumes from them. Other groups
   are untouched. Progress (the analysis's `progress`) is summed over the groups.
3. The group that completes the set enqueues `reduce_fanout(id)`: `finish` over every
   record, masks assembled from every group's parts: exactly the single-worker result.

The janitor (worker/janitor.py) calls `sweep` every few seconds: it puts a dead group back on
the queue (failing the analysis after MAX_LOST_ATTEMPTS deaths of one group, as for a whole
analysis), enqueues a queued group whose RQ job is gone (its dispatcher died before
enqueuing it), queues a reduce nobody queued or whose worker died, and keeps the analysis's
liveness key while groups wait in the queue, so it is shown `running`, not `stalled`, as
long as a worker lives. With no worker left, the key expires and the analysis shows
`stalled`; the next worker's janitor picks the dead groups up again.
"""

from __future__ import annotations

import json
import logging
import time

from redis import Redis
from rq import Retry

from app.core.queues import RETRY_INTERVALS, job_timeout, queue_for
from app.core.settings import Settings
from app.core.store import FAILED, RUNNING, Store, lost_attempts_error

log = logging.getLogger(__name__)

# A reduce queued this long without starting is queued again (its job may be lost).
REDUCE_LOST_AFTER_S = 900
# A queued group whose RQ job is gone (never enqueued: its dispatcher died; or lost) is queued
# again once its last enqueue is this old.
GROUP_JOB_LOST_AFTER_S = 30
# RQ job statuses of a job that will still run (or runs now).
_LIVE_JOB = {b"queued", b"scheduled", b"started", b"deferred"}


def wanted(settings: Settings, raw: dict[str, str], request: dict) -> bool:
    """Fan out this analysis? Once split, always (a retry continues the groups)."""
    if raw.get("fanout"):
        return True
    limit = settings.fanout_bytes
    return bool(limit) and int(request.get("total_bytes") or 0) > limit


def enqueue_group(r: Redis, settings: Settings, aid: str, k: int, nbytes: int, *, at_front: bool = False) -> None:
    job = queue_for(r, settings).enqueue(
        "worker.tasks.run_group", aid, k,
        job_timeout=job_timeout(settings, nbytes),
        retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
        result_ttl=0, failure_ttl=7 * 24 * 3600, at_front=at_front,
        description=f"analysis {aid} group {k}",
    )
    Store(r).set_group_job(aid, k, job.id)


def enqueue_reduce(r: Redis, settings: Settings, aid: str, total_bytes: int) -> None:
    queue_for(r, settings).enqueue(
        "worker.tasks.reduce_fanout", aid,
        job_timeout=job_timeout(settings, total_bytes),
        retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
        result_ttl=0, failure_ttl=7 * 24 * 3600, at_front=True,
        description=f"analysis {aid} reduce",
    )


def dispatch(store: Store, settings: Settings, aid: str, groups: list[dict]) -> list[int]:
    """Queue every group that is neither done nor running (all of them the first time); when all are
    done already (a retry after a failed reduce), queue the reduce. Returns the groups queued."""
    todo = store.dispatch_groups(aid, groups)
    for k in todo:
        enqueue_group(store.r, settings, aid, k, groups[k]["bytes"])
    if not todo and all(s["status"] == "done" for s in store.group_states(aid, len(groups))):
        if store.queue_fanout_reduce(aid):
            enqueue_reduce(store.r, settings, aid, sum(g["bytes"] for g in groups))
    store.sum_group_progress(aid, len(groups))
    return todo


def fail(store: Store, aid: str, error: dict) -> None:
    store.finish_attempt(aid, FAILED, error=error, keep_partial=True)
    store.leave_fanout(aid)


def sweep(store: Store, settings: Settings) -> None:
    """The janitor's pass over fanned-out analyses (see the module docstring)."""
    for aid in store.fanouts():
        raw = store.get_raw(aid)
        groups = store.get_groups(aid) if raw else None
        if raw is None or raw.get("status") != RUNNING or groups is None:
            store.leave_fanout(aid)
            continue
        states = store.group_states(aid, len(groups))
        lost = False
        for k, state in enumerate(states):
            if state["status"] != "running" or state["alive"]:
                continue
            code = store.requeue_group(aid, k)
            if code == 1:
                log.warning("analysis %s: group %d lost its worker; queued again to resume", aid, k)
                enqueue_group(store.r, settings, aid, k, groups[k]["bytes"], at_front=True)
                state["status"] = "queued"
            elif code == -1:
                log.warning("analysis %s: group %d lost its worker too often; the analysis fails", aid, k)
                fail(store, aid, json.loads(lost_attempts_error(aid)))
                lost = True
                break
        if lost:
            continue
        _requeue_lost_jobs(store, settings, aid, groups, states)
        reduce = raw.get("reduce")
        if all(s["status"] == "done" for s in states):
            total = sum(g["bytes"] for g in groups)
            if reduce is None:
                if store.queue_fanout_reduce(aid):
                    enqueue_reduce(store.r, settings, aid, total)
            else:
                code = store.requeue_fanout_reduce(aid, time.time() - REDUCE_LOST_AFTER_S)
                if code == 1:
                    log.warning("analysis %s: its reduce lost its worker (or its job); queued again", aid)
                    enqueue_reduce(store.r, settings, aid, total)
                elif code == -1:
                    fail(store, aid, json.loads(lost_attempts_error(aid)))
                    continue
        working = any(s["status"] == "running" for s in states) or reduce == "running"
        store.keep_fanout_alive(aid, touch_progress=not working)


def _requeue_lost_jobs(store: Store, settings: Settings, aid: str, groups: list[dict], states: list[dict]) -> None:
    """A queued group must have an RQ job that will run it; one whose job is gone is queued again."""
    from rq.job import Job

    queued = [k for k, state in enumerate(states) if state["status"] == "queued"]
    if not queued:
        return
    jobs = store.group_jobs(aid, queued)
    with store.r.pipeline() as p:
        for k in queued:
            if jobs[k][0]:
                p.hget(Job.key_for(jobs[k][0]), "status")
            else:
                p.echo(b"")  # never enqueued
        statuses = p.execute()
    now = time.time()
    for k, status in zip(queued, statuses):
        job_id, job_at = jobs[k]
        if status in _LIVE_JOB or now - job_at < GROUP_JOB_LOST_AFTER_S:
            continue
        log.warning("analysis %s: group %d is queued but its job is gone; queued again", aid, k)
        enqueue_group(store.r, settings, aid, k, groups[k]["bytes"])
