"""RQ task functions: run the engine and keep Redis informed as it goes.

A job carries only an analysis id. The request, the pinned sources and the
finished tensor records live in the product's Redis keys (app.store), so a run that
dies (worker killed, transient Hub error, timeout) is picked up by the next run
from where it stopped: finished tensors are passed to the engine as `resume` and
their mask parts stay in `<artifacts>/<id>/parts`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from app.settings import get_settings
from app.store import ALIVE_REFRESH_S, DONE, FAILED, QUEUED, Store, connect
from app.token_seal import unseal
from worker.engine import (
    AnalysisOptions,
    EngineError,
    SourceSpec,
    analyze,
    open_source,
    overlap,
    parse_source,
)

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
                if not self.store.refresh_run(self.aid, self.owner):
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
    if not store.start_run(analysis_id, owner, worker_name, initial):
        log.info("analysis %s is already being run elsewhere; this job stops", analysis_id)
        return "duplicate"
    log.info("analysis %s: run started (%d finished tensors to resume)", analysis_id, len(resume))

    try:
        with _Heartbeat(store, analysis_id, owner) as beat:
            result = _compute(store, settings, analysis_id, request, json.loads(raw["specs"]), resume, beat)
    except RunLost:
        log.warning("analysis %s: run lost its claim; another run continues it", analysis_id)
        return "lost"
    except EngineError as e:
        retries_left = getattr(job, "retries_left", None) if job is not None else None
        if e.code == "transient" and retries_left:
            log.warning("analysis %s: transient error, retrying (%s left): %s", analysis_id, retries_left, e.message)
            store.finish_run(analysis_id, QUEUED, error=e.to_dict(), keep_partial=True, drop_token=False)
            raise
        log.info("analysis %s failed: [%s] %s", analysis_id, e.code, e.message)
        store.finish_run(analysis_id, FAILED, error=e.to_dict(), keep_partial=True)
        return FAILED
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        # Redis went away mid-run: nothing can be recorded now. The run key expires, and
        # RQ's retry or the janitor runs it again from the tensors already stored.
        log.warning("analysis %s: lost Redis mid-run; it will resume", analysis_id)
        raise
    except JobTimeoutException:
        timeout = getattr(job, "timeout", None)
        store.finish_run(analysis_id, FAILED, keep_partial=True, error={
            "code": "timeout",
            "message": f"The analysis ran longer than its time limit ({timeout} s) and was stopped; "
                       "finished tensors are kept, so retrying continues where it stopped.",
        })
        return FAILED
    except Exception:
        log.exception("analysis %s: internal error", analysis_id)
        store.finish_run(analysis_id, FAILED, keep_partial=True, error={
            "code": "internal", "message": INTERNAL_MESSAGE.replace("{id}", analysis_id)})
        return FAILED
    store.finish_run(analysis_id, DONE, result=result)
    log.info("analysis %s done", analysis_id)
    _training_runs_may_reduce(store, settings, analysis_id)
    return DONE


def _training_runs_may_reduce(store: Store, settings, analysis_id: str) -> None:
    """Training runs waiting for this analysis are reduced once all theirs are done (app/runs.py).
    A failure here never fails the analysis: the janitor's sweep checks the runs again."""
    try:
        from app.runs import analysis_finished

        analysis_finished(store, settings, analysis_id)
    except Exception:
        log.warning("analysis %s: could not check the training runs waiting for it", analysis_id, exc_info=True)


def _compute(store: Store, settings, aid: str, request: dict, specs: dict, resume: dict, beat: _Heartbeat) -> dict:
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
        masks_dir = Path(settings.artifacts_dir) / aid
        masks_dir.mkdir(parents=True, exist_ok=True)

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
            store.set_progress(aid, {
                "tensors_done": p.tensors_done, "tensors_total": p.tensors_total,
                "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
                "bytes_per_s": round(rate, 1) if rate else None,
                "eta_s": round(remaining / rate, 1) if rate else None,
                "current": p.current,
            })

        return analyze(base, tuned, options, masks_dir=masks_dir, resume=resume or None,
                       on_tensor=on_tensor, on_progress=on_progress)


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
        files = [Path(settings.artifacts_dir) / i / "masks.safetensors" for i in ids]
        missing = [i for i, f in zip(ids, files) if not f.is_file()]
        if missing:
            raise EngineError("not_found", f"The mask files of analysis {', '.join(missing)} are gone from the "
                                           "artifacts directory; retry that analysis to write them again.")
        result = overlap(files, labels=_labels(results))
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
    """Reduce a training run (app/runs.py) from its finished analyses' results and masks."""
    import types

    from app.runs import reduce_points

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
    beat_store = types.SimpleNamespace(refresh_run=store.refresh_reduce)  # _Heartbeat on the run's own key
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
