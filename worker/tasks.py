"""RQ task functions: run the engine and keep Redis informed as it goes.

Jobs are enqueued by name ("worker.tasks.<fn>") and carry only an id. The request, the pinned
sources and the finished tensor records live in the product's Redis keys (app.core.store), so an
attempt that dies (worker killed, transient Hub error, timeout) is picked up by the next one from
where it stopped: finished tensors are passed to the engine as `resume` and their mask parts stay
in `<artifacts>/<id>/parts` (app/core/artifacts.py). What every task shares (owner id, heartbeat,
reopened sources, how a failure is recorded) is worker/jobrun.py.

A pair above SUBNETSCOPE_FANOUT_BYTES is fanned out (worker/fanout.py): `run_analysis` splits it
and queues one `run_group` job per tensor group, and the last group to finish queues
`reduce_fanout`, which builds the result and the masks from every group's output.
"""

from __future__ import annotations

import json
import logging
import time

from app.core.artifacts import artifact_store
from app.core.store import DONE, FAILED, QUEUED, RUNNING, lost_attempts_error
from worker import fanout
from worker.engine import EngineError, analyze, overlap
from worker.jobrun import JobRun
from worker.progress import reporters

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = ("The analysis stopped on an internal error in the worker; the worker log has the details. "
                    "It can be run again with POST /api/analyses/{id}/retry.")
TIMEOUT_MESSAGE = ("{what} ran longer than its time limit ({{timeout}} s) and was stopped; "
                   "finished tensors are kept, so retrying continues where it stopped.")
DUPLICATE = "duplicate"  # another job holds the claim, or the work is not due


def run_analysis(analysis_id: str) -> str:
    ctx = JobRun.current()
    store, aid = ctx.store, analysis_id
    raw = store.get_raw(aid)
    if raw is None or raw.get("status") == DONE:
        return raw.get("status", "missing") if raw else "missing"
    resume = ctx.resume_records(aid)
    if not store.start_attempt(aid, ctx.owner, ctx.worker_name, json.loads(raw.get("progress") or "null") or {}):
        log.info("analysis %s is already being run elsewhere; this job stops", aid)
        return DUPLICATE
    # "run started": the log line tests and operators grep for (an attempt, in the store's words).
    log.info("analysis %s: run started (%d finished tensors to resume)", aid, len(resume))
    fan_out = fanout.wanted(ctx.settings, raw, json.loads(raw["request"]))

    def work() -> str:
        with ctx.heartbeat(lambda owner: store.refresh_attempt(aid, owner), aid) as beat:
            if fan_out:
                _dispatch(ctx, aid, raw, beat)
                return "fanned_out"  # the groups and the reduce finish it
            with ctx.opened(aid, raw) as (base, tuned, options):
                artifacts = artifact_store(ctx.settings)
                on_tensor, on_progress = reporters(store, aid, beat, lambda p: store.set_progress(aid, p))
                result = analyze(base, tuned, options, masks_dir=artifacts.work_dir(aid), resume=resume or None,
                                 on_tensor=on_tensor, on_progress=on_progress)
                artifacts.publish(aid)
        store.finish_attempt(aid, DONE, result=result)
        log.info("analysis %s done", aid)
        _training_runs_may_reduce(ctx, aid)
        return DONE

    return ctx.guarded(
        f"analysis {aid}", work,
        fail=lambda error: store.finish_attempt(aid, FAILED, error=error, keep_partial=True),
        release=lambda error: store.finish_attempt(aid, QUEUED, error=error, keep_partial=True, drop_token=False),
        timeout=TIMEOUT_MESSAGE.format(what="The analysis"), internal=INTERNAL_MESSAGE.replace("{id}", aid))


def _training_runs_may_reduce(ctx: JobRun, analysis_id: str) -> None:
    """Training runs waiting for this analysis are reduced once all theirs are done (app/core/training_runs.py).
    A failure here never fails the analysis: the janitor's sweep checks the runs again."""
    try:
        from app.core.training_runs import analysis_finished

        analysis_finished(ctx.store, ctx.settings, analysis_id)
    except Exception:
        log.warning("analysis %s: could not check the training runs waiting for it", analysis_id, exc_info=True)


# --- fan-out (worker/fanout.py) -----------------------------------------------------------------


def _dispatch(ctx: JobRun, aid: str, raw: dict, beat) -> None:
    """Split the analysis into tensor groups (once) and queue the groups not done yet."""
    from worker.engine.analysis import pair_bytes, plan_analysis
    from worker.engine.tensor_groups import group_bytes, group_count, tensor_groups

    store, settings = ctx.store, ctx.settings
    groups = store.get_groups(aid)
    if groups is None:
        with ctx.opened(aid, raw) as (base, tuned, options):
            plan = plan_analysis(base, tuned, options)
            total = sum(pair_bytes(p) for p in plan.pairing.pairs)
            split = tensor_groups(plan, group_count(total, settings.fanout_group_bytes, len(plan.pairing.pairs)))
            sizes = group_bytes(plan, split)
        groups = store.set_groups(aid, [{"names": names, "bytes": size} for names, size in zip(split, sizes)])
    beat.check()
    queued = fanout.dispatch(store, settings, aid, groups)
    log.info("analysis %s: fanned out in %d groups (%d queued)", aid, len(groups), len(queued))


def _fanout_failed(ctx: JobRun, aid: str):
    return lambda error: fanout.fail(ctx.store, aid, error)


def run_group(analysis_id: str, k: int) -> str:
    """One tensor group of a fanned-out analysis: its records and mask parts, resumed from its
    finished tensors when an earlier attempt at it died. The last group done queues the reduce."""
    from worker.engine.analysis import analyze_part

    ctx = JobRun.current()
    store, aid = ctx.store, analysis_id
    raw = store.get_raw(aid)
    groups = store.get_groups(aid)
    if raw is None or raw.get("status") != RUNNING or groups is None or k >= len(groups):
        return (raw or {}).get("status", "missing")
    names = groups[k]["names"]
    claimed = store.start_group(aid, k, ctx.owner, ctx.worker_name)
    if claimed == -1:
        log.warning("analysis %s: group %d died too often; the analysis fails", aid, k)
        fanout.fail(store, aid, json.loads(lost_attempts_error(aid)))
        return FAILED
    if not claimed:
        log.info("analysis %s: group %d is done or being run elsewhere; this job stops", aid, k)
        return DUPLICATE
    resume = ctx.resume_records(aid, only=set(names))
    log.info("analysis %s: group %d/%d: run started (%d finished tensors to resume)", aid, k, len(groups),
             len(resume))

    def work() -> str:
        with ctx.heartbeat(lambda owner: store.refresh_group(aid, k, owner), f"{aid}:{k}") as beat:
            with ctx.opened(aid, raw) as (base, tuned, options):
                artifacts = artifact_store(ctx.settings)
                on_tensor, on_progress = reporters(store, aid, beat,
                                                   lambda p: store.set_group_progress(aid, k, len(groups), p))
                part = analyze_part(base, tuned, options, only=names, masks_dir=artifacts.work_dir(aid),
                                    resume=resume or None, on_tensor=on_tensor, on_progress=on_progress)
                artifacts.publish(aid)
        last = store.finish_group(aid, k, ctx.owner, len(groups), part.bytes_read, len(names), groups[k]["bytes"])
        store.sum_group_progress(aid, len(groups))
        log.info("analysis %s: group %d done", aid, k)
        if last:
            fanout.enqueue_reduce(ctx.r, ctx.settings, aid, sum(g["bytes"] for g in groups))
        return DONE

    return ctx.guarded(
        f"analysis {aid} group {k}", work, fail=_fanout_failed(ctx, aid),
        release=lambda error: store.release_group(aid, k, ctx.owner),
        timeout=TIMEOUT_MESSAGE.format(what="A group of this analysis"), internal=INTERNAL_MESSAGE.replace("{id}", aid))


def reduce_fanout(analysis_id: str) -> str:
    """Merge a fanned-out analysis once every group is done: the result from all records, the masks
    from all mask parts, exactly as one attempt over the whole pair writes them."""
    from worker.engine.analysis import finish
    from worker.engine.masks import part_is_complete

    ctx = JobRun.current()
    store, settings, aid = ctx.store, ctx.settings, analysis_id
    raw = store.get_raw(aid)
    groups = store.get_groups(aid)
    if raw is None or raw.get("status") != RUNNING or groups is None:
        return (raw or {}).get("status", "missing")
    if not store.start_fanout_reduce(aid, ctx.owner):
        log.info("analysis %s: its reduce is not due or already running; this job stops", aid)
        return DUPLICATE
    log.info("analysis %s: reduce of %d groups started", aid, len(groups))
    store.sum_group_progress(aid, len(groups), current=f"merging {len(groups)} groups")
    artifacts = artifact_store(settings)

    def work() -> str:
        with ctx.heartbeat(lambda owner: store.refresh_fanout_reduce(aid, owner),
                           f"{aid}:reduce") as beat:
            records: dict[str, dict] = {}
            for rec in map(json.loads, store.partial(aid)):
                records.setdefault(rec["name"], rec)
            artifacts.gather(aid)
            masks_dir = artifacts.work_dir(aid)
            # A group whose records or mask parts are not all here (the artifacts lost, or written where
            # this machine cannot see them) runs again; its finished tensors with parts are kept.
            missing = [k for k, g in enumerate(groups)
                       if any(n not in records or not part_is_complete(masks_dir / "parts", n, records[n]["numel"])
                              for n in g["names"])]
            if missing:
                return _reopen_groups(ctx, aid, raw, groups, missing)
            states = store.group_states(aid, len(groups))
            read = sum(int(s["bytes_read"] or 0) for s in states)
            started = float(raw.get("started_at") or time.time())
            with ctx.opened(aid, raw) as (base, tuned, options):
                beat.check()
                result = finish(base, tuned, options, records, masks_dir=masks_dir, bytes_read=read,
                                seconds=time.time() - started)
            artifacts.publish(aid)
            beat.check()
        attempts = [int(s["runs"] or 0) for s in states]
        store.set_fields(aid, fanout={"groups": len(groups), "bytes": [g["bytes"] for g in groups],
                                      "runs": attempts, "workers": [s["worker"] for s in states]})
        store.finish_attempt(aid, DONE, result=result)
        store.end_fanout(aid, len(groups))
        log.info("analysis %s done (%d groups, attempts per group %s)", aid, len(groups), attempts)
        _training_runs_may_reduce(ctx, aid)
        return DONE

    return ctx.guarded(f"analysis {aid} reduce", work, fail=_fanout_failed(ctx, aid),
                       release=lambda error: store.requeue_fanout_reduce(aid, time.time()),
                       internal=INTERNAL_MESSAGE.replace("{id}", aid))


def _reopen_groups(ctx: JobRun, aid: str, raw: dict, groups: list[dict], missing: list[int]) -> str:
    if int(raw.get("reopened") or 0) >= 2:
        raise EngineError("not_found", (
            f"The mask parts of {len(missing)} groups of this analysis are not in this worker's artifacts "
            "directory although their groups finished; every worker must share one artifacts volume "
            "(SUBNETSCOPE_DATA_DIR; see README, 'Many workers'). Retry once that is fixed."))
    log.warning("analysis %s: the output of groups %s is incomplete; they run again", aid, missing)
    ctx.store.reopen_groups(aid, missing)
    for k in missing:
        fanout.enqueue_group(ctx.r, ctx.settings, aid, k, groups[k]["bytes"], at_front=True)
    return "reopened"


# --- overlaps and training runs -----------------------------------------------------------------


def _labels(results: list[dict]) -> list[str]:
    labels = []
    for res in results:
        name = str(res["tuned"]["id"]).rstrip("/")
        label = name.replace("local:", "").split("/")[-1] or name
        labels.append(label)
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    return labels


def run_overlap(overlap_id: str) -> str:
    ctx = JobRun.current()
    store = ctx.store
    raw = store.get_overlap_raw(overlap_id)
    if raw is None:
        return "missing"
    ids = json.loads(raw["request"])["analyses"]
    store.finish_overlap(overlap_id, "running")

    def work() -> str:
        results = [json.loads(store.get_raw(i)["result"]) for i in ids]
        found = [artifact_store(ctx.settings).masks_path(i) for i in ids]
        missing = [i for i, f in zip(ids, found) if f is None]
        if missing:
            raise EngineError("not_found", f"The mask files of analysis {', '.join(missing)} are gone from the "
                                           "artifacts directory; retry that analysis to write them again.")
        result = overlap(found, labels=_labels(results))
        result["analyses"] = ids
        store.finish_overlap(overlap_id, DONE, result=result)
        return DONE

    return ctx.guarded(
        f"overlap {overlap_id}", work, fail=lambda error: store.finish_overlap(overlap_id, FAILED, error=error),
        internal="The overlap stopped on an internal error; the worker log has the details.")


def run_dynamics(run_id: str) -> str:
    """Reduce a training run (app/core/training_runs.py) from its finished analyses' results and masks."""
    from worker.training_runs import reduce_points

    ctx = JobRun.current()
    store = ctx.store
    raw = store.get_training_run(run_id)
    if raw is None or raw.get("status") == DONE:
        return raw.get("status", "missing") if raw else "missing"
    if not store.start_reduce(run_id, ctx.owner):
        log.info("training run %s is not ready or already being reduced; this job stops", run_id)
        return DUPLICATE

    def work() -> str:
        with ctx.heartbeat(lambda owner: store.refresh_reduce(run_id, owner), run_id) as beat:
            result = reduce_points(store, ctx.settings, run_id, json.loads(raw["request"]),
                                   on_progress=lambda done, total: beat.check())
        store.finish_reduce(run_id, DONE, result=result)
        log.info("training run %s done", run_id)
        return DONE

    return ctx.guarded(
        f"training run {run_id}", work, fail=lambda error: store.finish_reduce(run_id, FAILED, error=error),
        internal="The reduce of this run stopped on an internal error; the worker log "
                 f"has the details. POST /api/runs/{run_id}/retry runs it again.")
