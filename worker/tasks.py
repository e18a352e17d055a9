"""RQ task functions: run the engine and keep Redis informed as it goes.

A job carries only an analysis id. The request, the pinned sources and the
finished tensor records live in the product's Redis keys (app.core.store), so a run that
dies (worker killed, transient Hub error, timeout) is picked up by the next run
from where it stopped: finished tensors are passed to the engine as `resume` and
their mask parts stay in `<artifacts>/<id>/parts` (app/core/artifacts.py).

A pair above SUBNETSCOPE_FANOUT_BYTES is fanned out (worker/fanout.py): `run_analysis`
splits it and queues one `run_group` job per tensor group, and the last group to finish
queues `reduce_fanout`, which builds the result and the masks from every group's output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import types

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from app.core.artifacts import artifact_store
from app.core.settings import get_settings
from app.core.store import ALIVE_REFRESH_S, DONE, FAILED, QUEUED, Store, connect, lost_attempts_error
from app.core.token_seal import unseal
from worker import fanout
from worker.engine import AnalysisOptions, EngineError, SourceSpec, analyze, open_source, overlap, parse_source

log = logging.getLogger(__name__)

# Progress is written at most this often; finished tensors are written as they finish.
PROGRESS_EVERY_S = 0.2

INTERNAL_MESSAGE = ("The analysis stopped on an internal error in the worker; the worker log has the details. "
                    "It can be run again with POST /api/analyses/{id}/retry.")


class RunLost(Exception):
    """Another run took over this analysis (ours was presumed dead): stop without writing."""


def _redis():
    job = get_current_job()
    if job is not None:
        return job, job.connection
    return None, connect(get_settings().redis_url)


def _owner(job) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{job.id if job else 'direct'}"


class _Heartbeat:
    """Keeps the run's liveness key fresh from a thread, so slow tensors never look dead."""

    def __init__(self, store: Store, aid: str, owner: str):
        self.store, self.aid, self.owner = store, aid, owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{aid}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(ALIVE_REFRESH_S):
            try:
                if not self.store.refresh_attempt(self.aid, self.owner):
                    self.lost = True
                    return
            except Exception:  # Redis blip: the next beat tries again
                log.warning("heartbeat for %s failed", self.aid, exc_info=True)


def _reopen(spec: dict, token: str | None, base=None):
    """`base`: the reopened base, onto which a LoRA adapter is merged (never the one its config names)."""
    settings = get_settings()
    where = {"subfolder": spec.get("subfolder"), "file": spec.get("file")}  # inside the checkpoint
    if spec["kind"] == "local":
        # Re-checked against the root: the directory may have become a symlink since submission.
        parsed = parse_source(spec["id"], local_root=settings.checkpoints_root, allow_any_path=False, **where)
        parsed = SourceSpec("local", parsed.id, None, display=spec.get("display") or parsed.display, **where)
    else:
        parsed = SourceSpec("hub", spec["id"], spec["revision"], display=spec.get("display") or spec["id"], **where)
    return open_source(parsed, token=token, base=base, local_root=settings.checkpoints_root, allow_any_path=False)


def run_analysis(analysis_id: str) -> str:
    settings = get_settings()
    job, r = _redis()
    store = Store(r)
    raw = store.get_raw(analysis_id)
    if raw is None or raw.get("status") == DONE:
        return raw.get("status", "missing") if raw else "missing"
    owner = _owner(job)
    request = json.loads(raw["request"])
    worker_name = (job.worker_name if job is not None else None) or socket.gethostname()
    resume = {rec["name"]: rec for rec in map(json.loads, store.partial(analysis_id))}
    initial = json.loads(raw.get("progress") or "null") or {}
    if not store.start_attempt(analysis_id, owner, worker_name, initial):
        log.info("analysis %s is already being run elsewhere; this job stops", analysis_id)
        return "duplicate"
    log.info("analysis %s: run started (%d finished tensors to resume)", analysis_id, len(resume))

    fan_out = fanout.wanted(settings, raw, request)
    try:
        with _Heartbeat(store, analysis_id, owner) as beat:
            if fan_out:
                result = _dispatch(store, settings, analysis_id, request, json.loads(raw["specs"]), beat)
            else:
                result = _compute(store, settings, analysis_id, request, json.loads(raw["specs"]), resume, beat)
    except RunLost:
        log.warning("analysis %s: run lost its claim; another run continues it", analysis_id)
        return "lost"
    except EngineError as e:
        retries_left = getattr(job, "retries_left", None) if job is not None else None
        if e.code == "transient" and retries_left:
            log.warning("analysis %s: transient error, retrying (%s left): %s", analysis_id, retries_left, e.message)
            store.finish_attempt(analysis_id, QUEUED, error=e.to_dict(), keep_partial=True, drop_token=False)
            raise
        log.info("analysis %s failed: [%s] %s", analysis_id, e.code, e.message)
        store.finish_attempt(analysis_id, FAILED, error=e.to_dict(), keep_partial=True)
        return FAILED
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        # Redis went away mid-run: nothing can be recorded now. The run key expires, and
        # RQ's retry or the janitor runs it again from the tensors already stored.
        log.warning("analysis %s: lost Redis mid-run; it will resume", analysis_id)
        raise
    except JobTimeoutException:
        timeout = getattr(job, "timeout", None)
        store.finish_attempt(analysis_id, FAILED, keep_partial=True, error={
            "code": "timeout",
            "message": f"The analysis ran longer than its time limit ({timeout} s) and was stopped; "
                       "finished tensors are kept, so retrying continues where it stopped.",
        })
        return FAILED
    except Exception:
        log.exception("analysis %s: internal error", analysis_id)
        store.finish_attempt(analysis_id, FAILED, keep_partial=True, error={
            "code": "internal", "message": INTERNAL_MESSAGE.replace("{id}", analysis_id)})
        return FAILED
    if fan_out:
        return "fanned_out"  # the groups and the reduce finish it
    store.finish_attempt(analysis_id, DONE, result=result)
    log.info("analysis %s done", analysis_id)
    _training_runs_may_reduce(store, settings, analysis_id)
    return DONE


def _training_runs_may_reduce(store: Store, settings, analysis_id: str) -> None:
    """Training runs waiting for this analysis are reduced once all theirs are done (app/core/training_runs.py).
    A failure here never fails the analysis: the janitor's sweep checks the runs again."""
    try:
        from app.core.training_runs import analysis_finished

        analysis_finished(store, settings, analysis_id)
    except Exception:
        log.warning("analysis %s: could not check the training runs waiting for it", analysis_id, exc_info=True)


@contextlib.contextmanager
def _opened(store: Store, settings, aid: str, request: dict, specs: dict):
    """(base, tuned, options) of the analysis, reopened as submitted; refused if a checkpoint changed."""
    token = unseal(settings, store.get_token(aid)) or settings.hf_token
    base = _reopen(specs["base"], token)
    try:
        tuned = _reopen(specs["tuned"], token, base=base)
    except BaseException:
        base.close()
        raise
    with base, tuned:
        for role, src in (("base", base), ("tuned", tuned)):
            if src.sha != request["sources"][role]["sha"]:
                raise EngineError(
                    "malformed",
                    f"The {role} checkpoint {src.spec.label} changed on disk since it was submitted; "
                    "submit it again to analyse the new files.",
                )
        options = AnalysisOptions(tolerance=float(request["tolerance"]), rank=request["rank"],
                                  geometry=request.get("geometry", "off"), device=settings.device)
        yield base, tuned, options


def _reporters(store: Store, aid: str, beat: _Heartbeat, write_progress):
    """on_tensor (records to Redis as they finish) and on_progress (throttled, with rate and ETA)."""
    started = time.monotonic()
    first_bytes: list[int] = []
    last_write = [0.0]

    def on_tensor(record: dict) -> None:
        if beat.lost:
            raise RunLost()
        store.add_tensor(aid, record)

    def on_progress(p) -> None:
        if beat.lost:
            raise RunLost()
        now = time.monotonic()
        final = p.tensors_done >= p.tensors_total
        if not final and now - last_write[0] < PROGRESS_EVERY_S:
            return
        last_write[0] = now
        if not first_bytes:
            first_bytes.append(p.bytes_done)  # bytes already done when resuming don't count for speed
        elapsed = now - started
        moved = p.bytes_done - first_bytes[0]
        rate = moved / elapsed if moved > 0 and elapsed > 0 else None
        remaining = max(p.bytes_total - p.bytes_done, 0)
        write_progress({
            "tensors_done": p.tensors_done, "tensors_total": p.tensors_total,
            "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
            "bytes_per_s": round(rate, 1) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate else None,
            "current": p.current,
        })

    return on_tensor, on_progress


def _compute(store: Store, settings, aid: str, request: dict, specs: dict, resume: dict, beat: _Heartbeat) -> dict:
    with _opened(store, settings, aid, request, specs) as (base, tuned, options):
        artifacts = artifact_store(settings)
        on_tensor, on_progress = _reporters(store, aid, beat, lambda p: store.set_progress(aid, p))
        result = analyze(base, tuned, options, masks_dir=artifacts.work_dir(aid), resume=resume or None,
                         on_tensor=on_tensor, on_progress=on_progress)
        artifacts.publish(aid)
        return result


# --- fan-out (worker/fanout.py) -----------------------------------------------------------------


def _dispatch(store: Store, settings, aid: str, request: dict, specs: dict, beat: _Heartbeat) -> None:
    """Split the analysis into tensor groups (once) and queue the groups not done yet."""
    from worker.engine.analysis import pair_bytes, plan_analysis
    from worker.engine.tensor_groups import group_bytes, group_count, tensor_groups

    groups = store.get_groups(aid)
    if groups is None:
        with _opened(store, settings, aid, request, specs) as (base, tuned, options):
            plan = plan_analysis(base, tuned, options)
            total = sum(pair_bytes(p) for p in plan.pairing.pairs)
            split = tensor_groups(plan, group_count(total, settings.fanout_group_bytes, len(plan.pairing.pairs)))
            sizes = group_bytes(plan, split)
        groups = store.set_groups(aid, [{"names": names, "bytes": size} for names, size in zip(split, sizes)])
    if beat.lost:
        raise RunLost()
    queued = fanout.dispatch(store, settings, aid, groups)
    log.info("analysis %s: fanned out in %d groups (%d queued)", aid, len(groups), len(queued))


def _fanout_failed(store: Store, aid: str, error: dict) -> str:
    fanout.fail(store, aid, error)
    return FAILED


def run_group(analysis_id: str, k: int) -> str:
    """One tensor group of a fanned-out analysis: its records and mask parts, resumed from its
    finished tensors when an earlier run of it died. The last group done queues the reduce."""
    from worker.engine.analysis import analyze_part

    settings = get_settings()
    job, r = _redis()
    store = Store(r)
    raw = store.get_raw(analysis_id)
    groups = store.get_groups(analysis_id)
    if raw is None or raw.get("status") != "running" or groups is None or k >= len(groups):
        return (raw or {}).get("status", "missing")
    names = groups[k]["names"]
    owner = _owner(job)
    worker_name = (job.worker_name if job is not None else None) or socket.gethostname()
    claimed = store.start_group(analysis_id, k, owner, worker_name)
    if claimed == -1:
        log.warning("analysis %s: group %d died too often; the analysis fails", analysis_id, k)
        return _fanout_failed(store, analysis_id, json.loads(lost_attempts_error(analysis_id)))
    if not claimed:
        log.info("analysis %s: group %d is done or being run elsewhere; this job stops", analysis_id, k)
        return "duplicate"
    wanted = set(names)
    resume = {rec["name"]: rec for rec in map(json.loads, store.partial(analysis_id)) if rec["name"] in wanted}
    log.info("analysis %s: group %d/%d: run started (%d finished tensors to resume)", analysis_id, k, len(groups),
             len(resume))
    beat_store = types.SimpleNamespace(refresh_attempt=lambda aid, who: store.refresh_group(aid, k, who))
    request = json.loads(raw["request"])
    try:
        with _Heartbeat(beat_store, analysis_id, owner) as beat:
            with _opened(store, settings, analysis_id, request, json.loads(raw["specs"])) as (base, tuned, options):
                artifacts = artifact_store(settings)
                on_tensor, on_progress = _reporters(
                    store, analysis_id, beat,
                    lambda p: store.set_group_progress(analysis_id, k, len(groups), p))
                part = analyze_part(base, tuned, options, only=names, masks_dir=artifacts.work_dir(analysis_id),
                                    resume=resume or None, on_tensor=on_tensor, on_progress=on_progress)
                artifacts.publish(analysis_id)
    except RunLost:
        log.warning("analysis %s: group %d lost its claim; stops", analysis_id, k)
        return "lost"
    except EngineError as e:
        retries_left = getattr(job, "retries_left", None) if job is not None else None
        if e.code == "transient" and retries_left:
            log.warning("analysis %s: group %d: transient error, retrying (%s left): %s", analysis_id, k,
                        retries_left, e.message)
            store.release_group(analysis_id, k, owner)
            raise
        log.info("analysis %s failed in group %d: [%s] %s", analysis_id, k, e.code, e.message)
        return _fanout_failed(store, analysis_id, e.to_dict())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        log.warning("analysis %s: group %d lost Redis mid-run; it will resume", analysis_id, k)
        raise
    except JobTimeoutException:
        return _fanout_failed(store, analysis_id, {
            "code": "timeout",
            "message": f"A group of this analysis ran longer than its time limit ({getattr(job, 'timeout', None)} s) "
                       "and was stopped; finished tensors are kept, so retrying continues where it stopped."})
    except Exception:
        log.exception("analysis %s: group %d: internal error", analysis_id, k)
        return _fanout_failed(store, analysis_id, {
            "code": "internal", "message": INTERNAL_MESSAGE.replace("{id}", analysis_id)})
    last = store.finish_group(analysis_id, k, owner, len(groups), part.bytes_read, len(names), groups[k]["bytes"])
    store.sum_group_progress(analysis_id, len(groups))
    log.info("analysis %s: group %d done", analysis_id, k)
    if last:
        fanout.enqueue_reduce(r, settings, analysis_id, sum(g["bytes"] for g in groups))
    return DONE


def reduce_fanout(analysis_id: str) -> str:
    """Merge a fanned-out analysis once every group is done: the result from all records, the masks
    from all mask parts, exactly as one run over the whole pair writes them."""
    from worker.engine.analysis import finish
    from worker.engine.masks import part_is_complete

    settings = get_settings()
    job, r = _redis()
    store = Store(r)
    raw = store.get_raw(analysis_id)
    groups = store.get_groups(analysis_id)
    if raw is None or raw.get("status") != "running" or groups is None:
        return (raw or {}).get("status", "missing")
    owner = _owner(job)
    if not store.start_fanout_reduce(analysis_id, owner):
        log.info("analysis %s: its reduce is not due or already running; this job stops", analysis_id)
        return "duplicate"
    log.info("analysis %s: reduce of %d groups started", analysis_id, len(groups))
    store.sum_group_progress(analysis_id, len(groups), current=f"merging {len(groups)} groups")
    beat_store = types.SimpleNamespace(refresh_attempt=store.refresh_fanout_reduce)
    request = json.loads(raw["request"])
    artifacts = artifact_store(settings)
    try:
        with _Heartbeat(beat_store, analysis_id, owner) as beat:
            records: dict[str, dict] = {}
            for rec in map(json.loads, store.partial(analysis_id)):
                records.setdefault(rec["name"], rec)
            artifacts.gather(analysis_id)
            masks_dir = artifacts.work_dir(analysis_id)
            # A group whose records or mask parts are not all here (the artifacts lost, or written where
            # this machine cannot see them) runs again; its finished tensors with parts are kept.
            missing = [k for k, g in enumerate(groups)
                       if any(n not in records or not part_is_complete(masks_dir / "parts", n, records[n]["numel"])
                              for n in g["names"])]
            if missing:
                reopened = int(raw.get("reopened") or 0)
                if reopened >= 2:
                    raise EngineError("not_found", (
                        f"The mask parts of {len(missing)} groups of this analysis are not in this worker's artifacts "
                        "directory although their groups finished; every worker must share one artifacts volume "
                        "(SUBNETSCOPE_DATA_DIR; see README, 'Many workers'). Retry once that is fixed."))
                log.warning("analysis %s: the output of groups %s is incomplete; they run again", analysis_id, missing)
                store.reopen_groups(analysis_id, missing)
                for k in missing:
                    fanout.enqueue_group(r, settings, analysis_id, k, groups[k]["bytes"], at_front=True)
                return "reopened"
            states = store.group_states(analysis_id, len(groups))
            read = sum(int(s["bytes_read"] or 0) for s in states)
            started = float(raw.get("started_at") or time.time())
            with _opened(store, settings, analysis_id, request, json.loads(raw["specs"])) as (base, tuned, options):
                if beat.lost:
                    raise RunLost()
                result = finish(base, tuned, options, records, masks_dir=masks_dir, bytes_read=read,
                                seconds=time.time() - started)
            artifacts.publish(analysis_id)
            if beat.lost:
                raise RunLost()
    except RunLost:
        log.warning("analysis %s: reduce lost its claim; stops", analysis_id)
        return "lost"
    except EngineError as e:
        retries_left = getattr(job, "retries_left", None) if job is not None else None
        if e.code == "transient" and retries_left:
            log.warning("analysis %s: reduce: transient error, retrying (%s left): %s", analysis_id, retries_left,
                        e.message)
            store.requeue_fanout_reduce(analysis_id, time.time())
            raise
        log.info("analysis %s: reduce failed: [%s] %s", analysis_id, e.code, e.message)
        return _fanout_failed(store, analysis_id, e.to_dict())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        log.warning("analysis %s: reduce lost Redis; the janitor queues it again", analysis_id)
        raise
    except Exception:
        log.exception("analysis %s: reduce: internal error", analysis_id)
        return _fanout_failed(store, analysis_id, {
            "code": "internal", "message": INTERNAL_MESSAGE.replace("{id}", analysis_id)})
    runs = [int(s["runs"] or 0) for s in states]
    store.set_fields(analysis_id, fanout={"groups": len(groups), "bytes": [g["bytes"] for g in groups], "runs": runs,
                                          "workers": [s["worker"] for s in states]})
    store.finish_attempt(analysis_id, DONE, result=result)
    store.end_fanout(analysis_id, len(groups))
    log.info("analysis %s done (%d groups, runs per group %s)", analysis_id, len(groups), runs)
    _training_runs_may_reduce(store, settings, analysis_id)
    return DONE


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
    settings = get_settings()
    _, r = _redis()
    store = Store(r)
    raw = store.get_overlap_raw(overlap_id)
    if raw is None:
        return "missing"
    ids = json.loads(raw["request"])["analyses"]
    store.finish_overlap(overlap_id, "running")
    try:
        results = [json.loads(store.get_raw(i)["result"]) for i in ids]
        found = [artifact_store(settings).masks_path(i) for i in ids]
        missing = [i for i, f in zip(ids, found) if f is None]
        if missing:
            raise EngineError("not_found", f"The mask files of analysis {', '.join(missing)} are gone from the "
                                           "artifacts directory; retry that analysis to write them again.")
        result = overlap(found, labels=_labels(results))
        result["analyses"] = ids
    except EngineError as e:
        store.finish_overlap(overlap_id, FAILED, error=e.to_dict())
        return FAILED
    except Exception:
        log.exception("overlap %s: internal error", overlap_id)
        store.finish_overlap(overlap_id, FAILED, error={
            "code": "internal", "message": "The overlap stopped on an internal error; the worker log has the details."})
        return FAILED
    store.finish_overlap(overlap_id, DONE, result=result)
    return DONE


def run_dynamics(run_id: str) -> str:
    """Reduce a training run (app/core/training_runs.py) from its finished analyses' results and masks."""
    from worker.training_runs import reduce_points

    settings = get_settings()
    job, r = _redis()
    store = Store(r)
    raw = store.get_training_run(run_id)
    if raw is None or raw.get("status") == DONE:
        return raw.get("status", "missing") if raw else "missing"
    owner = _owner(job)
    if not store.start_reduce(run_id, owner):
        log.info("training run %s is not ready or already being reduced; this job stops", run_id)
        return "duplicate"
    beat_store = types.SimpleNamespace(refresh_attempt=store.refresh_reduce)  # _Heartbeat on the run's own key
    try:
        with _Heartbeat(beat_store, run_id, owner) as beat:
            def progress(done: int, total: int) -> None:
                if beat.lost:
                    raise RunLost()

            result = reduce_points(store, settings, run_id, json.loads(raw["request"]), on_progress=progress)
    except RunLost:
        log.warning("training run %s: reduce lost its claim; another worker continues it", run_id)
        return "lost"
    except EngineError as e:
        log.info("training run %s failed: [%s] %s", run_id, e.code, e.message)
        store.finish_reduce(run_id, FAILED, error=e.to_dict())
        return FAILED
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        log.warning("training run %s: lost Redis mid-reduce; the janitor queues it again", run_id)
        raise
    except Exception:
        log.exception("training run %s: internal error", run_id)
        store.finish_reduce(run_id, FAILED, error={
            "code": "internal", "message": "The reduce of this run stopped on an internal error; the worker log "
                                           f"has the details. POST /api/runs/{run_id}/retry runs it again."})
        return FAILED
    store.finish_reduce(run_id, DONE, result=result)
    log.info("training run %s done", run_id)
    return DONE
