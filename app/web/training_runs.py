"""Training runs in the service: submission, retry and the GET body (the reduce trigger: app/core/training_runs.py).

A run is a group of ordinary analyses: (base, c_i) for every checkpoint and the consecutive
(c_{i-1}, c_i), the first of which is (base, c_1) itself. They get the ids POST /api/analyses
would give (app/web/submission.py: prepare_analysis, commit_analysis), so a pair already computed is
reused and one submitted twice is computed once; RQ spreads them over the workers that are up.
The reduce (worker/tasks.py: run_dynamics) is queued once all are done: checked at the end of
each analysis (worker/tasks.py) and, as a safety net, by the janitor (worker/janitor.py), which
also re-queues a reduce whose worker died. Everything that can be refused (unknown run, a
pattern matching nothing, too few or too many checkpoints, mixed architectures) is checked
before anything is recorded or queued.
"""

from __future__ import annotations

import json
import logging

from redis import Redis

from app.core.ids import content_id
from app.core.refusals import Refused, refusal
from app.core.settings import Settings
from app.core.store import DONE, FAILED, Store
from app.core.training_runs import analysis_ids, maybe_reduce
from app.web import views
from app.web.submission import Submitted, commit_analysis, prepare_analysis, retry_analysis
from worker.engine.tolerance import tolerance_key

log = logging.getLogger(__name__)

def run_id(engine_version: str, base_sha: str, shas: list[str], tolerance: float) -> str:
    """Same base, checkpoints (by content, in order) and tolerance give the same run."""
    return content_id("run", engine_version, base_sha, *shas, tolerance_key(tolerance))


def submit_run(r: Redis, settings: Settings, *, base: str | None, run: str, revisions: str | None = None,
               tolerance: float = 1e-5, token: str | None = None, deadline: float | None = None) -> Submitted:
    """`deadline` (time.monotonic()): past it the client was already answered 504 (app/web/resolving.py),
    so a resolution that finishes late records nothing."""
    import time

    from worker.engine import ENGINE_VERSION, EngineError
    from worker.engine.checkpoints.training_run import open_run, plan_run

    hub_token = token or settings.hf_token
    where = dict(local_root=settings.checkpoints_root, allow_any_path=False)
    try:
        plan = plan_run(base, run, revisions=revisions, limit=settings.max_run_checkpoints, token=hub_token, **where)
        base_src, sources = open_run(plan, token=hub_token, **where)
    except EngineError as e:
        raise refusal(e) from None
    try:
        base_text = (base or "").strip() or plan.base.display
        checkpoints, mains, consecutive = [], {}, {}
        for i, (c, src) in enumerate(zip(plan.checkpoints, sources)):
            main = prepare_analysis(base_src, src, base=base_text, tuned=c.spec.display, tolerance=tolerance)
            cons = main if i == 0 else prepare_analysis(
                sources[i - 1], src, base=plan.checkpoints[i - 1].spec.display, tuned=c.spec.display,
                tolerance=tolerance)
            mains.setdefault(main.id, main)
            consecutive.setdefault(cons.id, cons)
            checkpoints.append({**c.describe(), "source": src.describe(), "analysis": main.id, "consecutive": cons.id})
        # Queued in this order: every (base, c_i) first, whose masks the reduce reads.
        prepared = {**mains, **{k: v for k, v in consecutive.items() if k not in mains}}
        rid = run_id(ENGINE_VERSION, base_src.sha, [s.sha for s in sources], tolerance)
        request = {
            "base": (base or "").strip() or None, "run": run, "revisions": revisions, "tolerance": float(tolerance),
            "base_name": plan.base_name, "base_label": base_text,
            "run_source": {"kind": plan.run.kind, "id": plan.run.display or plan.run.id},
            "base_source": base_src.describe(), "checkpoints": checkpoints, "engine_version": ENGINE_VERSION,
        }
    finally:
        base_src.close()
        for src in sources:
            src.close()

    if deadline is not None and time.monotonic() > deadline:
        raise Refused(504, "hub_unavailable", "Resolving the run's revisions on the Hub took longer than the "
                                              "deployment's budget (SUBNETSCOPE_HUB_TIMEOUT_S); nothing was recorded.")
    store = Store(r)
    created = store.create_training_run(rid, request)
    try:
        store.watch_analyses(rid, prepared)
        for p in prepared.values():  # existing ones are reused as they are; failed ones run again
            commit_analysis(r, settings, p, token)
    except Exception:
        if created == 1:
            store.drop_training_run(rid)
        raise
    maybe_reduce(store, settings, rid)
    raw = store.get_training_run(rid) or {}
    return Submitted(rid, raw.get("status", "queued"), bool(created))


def retry_run(r: Redis, settings: Settings, rid: str) -> str:
    """Run the failed (or dead-worker stalled) analyses of a run again, and a failed reduce."""
    store = Store(r)
    raw = store.get_training_run(rid)
    if raw is None:
        raise Refused(404, "unknown_run", f"No training run with id {rid!r}.")
    request = json.loads(raw["request"])
    states = store.analysis_states(analysis_ids(request))
    for aid, (fields, alive) in states.items():
        if fields is not None and views.status_of(fields, alive, settings.stall_seconds) in ("failed", "stalled"):
            retry_analysis(r, settings, aid)
    store.rearm_training_run(rid)
    maybe_reduce(store, settings, rid)
    return (store.get_training_run(rid) or {}).get("status", "queued")


# --- the GET body ------------------------------------------------------------------------------

def _analysis_view(aid: str, fields: dict | None, alive: bool, settings: Settings) -> dict:
    if fields is None:
        return {"id": aid, "status": "missing", "url": f"/a/{aid}", "progress": None, "error": None}
    status = views.status_of(fields, alive, settings.stall_seconds)
    summary = json.loads(fields["summary"]) if fields.get("summary") else None
    out = {"id": aid, "status": status, "url": f"/a/{aid}",
           "progress": json.loads(fields.get("progress") or "null"),
           "error": json.loads(fields["error"]) if fields.get("error") and status != DONE else None,
           "sparsity": (summary or {}).get("sparsity") if status == DONE else None}
    return out


def run_view(store: Store, settings: Settings, rid: str, raw: dict) -> dict:
    """GET /api/runs/{id} (the result spliced in by the route)."""
    request = json.loads(raw["request"])
    states = store.analysis_states(analysis_ids(request))
    views_by_id = {aid: _analysis_view(aid, fields, alive, settings) for aid, (fields, alive) in states.items()}
    checkpoints, done_cps, bytes_done, bytes_total = [], 0, 0, 0
    for c in request.get("checkpoints") or []:
        main, cons = views_by_id[c["analysis"]], views_by_id[c["consecutive"]]
        done_cps += main["status"] == DONE and cons["status"] == DONE
        checkpoints.append({"name": c["name"], "step": c["step"], "ref": c.get("ref"),
                            "sha": (c.get("source") or {}).get("sha"), "source": c.get("source"),
                            "analysis": main, "consecutive": cons})
    for v in views_by_id.values():
        p = v.get("progress") or {}
        total = p.get("bytes_total") or 0
        bytes_total += total
        bytes_done += total if v["status"] == DONE else min(p.get("bytes_done") or 0, total)
    statuses = [v["status"] for v in views_by_id.values()]
    stored = raw.get("status", "queued")
    error = json.loads(raw["error"]) if raw.get("error") else None
    if stored == DONE:
        status, phase = DONE, "done"
    elif stored == FAILED:
        status, phase = FAILED, "reduce"
    elif any(s in (FAILED, "missing") for s in statuses):
        status, phase = FAILED, "analyses"
        bad = next(c for c in checkpoints for v in (c["analysis"], c["consecutive"]) if v["status"] in (FAILED, "missing"))
        which = bad["analysis"] if bad["analysis"]["status"] in (FAILED, "missing") else bad["consecutive"]
        reason = (which.get("error") or {}).get("message") or "its record is gone"
        error = {"code": "analysis_failed", "message": (
            f"The analysis {which['id']} of checkpoint {bad['name']} failed: {reason} "
            f"POST /api/runs/{rid}/retry runs the failed analyses again.")}
    elif stored == "reducing":
        status, phase = "running", "reduce"
    elif "stalled" in statuses:
        status, phase = "stalled", "analyses"
    elif all(s == "queued" for s in statuses):
        status, phase = "queued", "analyses"
    else:
        status, phase = "running", "analyses"
    return {
        "id": rid, "status": status, "phase": phase, "url": f"/r/{rid}", "api_url": f"/api/runs/{rid}",
        "request": {k: request.get(k) for k in ("base", "run", "revisions", "tolerance", "base_name", "base_label")},
        "base": request.get("base_source"), "run": request.get("run_source"),
        "created_at": views.iso(raw.get("created_at")), "updated_at": views.iso(raw.get("updated_at")),
        "progress": {"analyses_done": statuses.count(DONE), "analyses_total": len(statuses),
                     "checkpoints_done": done_cps, "checkpoints_total": len(checkpoints),
                     "bytes_done": bytes_done, "bytes_total": bytes_total},
        "checkpoints": checkpoints, "error": error,
    }


def list_item(store: Store, settings: Settings, raw: dict) -> dict:
    """GET /api/runs: one run's line (its status as GET /api/runs/{id} says it, no result)."""
    view = run_view(store, settings, raw["id"], raw)
    cps = view["checkpoints"]
    last = cps[-1] if cps else None
    req = view["request"]
    return {
        "id": view["id"], "status": view["status"], "phase": view["phase"], "url": view["url"],
        "api_url": view["api_url"], "run": (view.get("run") or {}).get("id") or req.get("run"),
        "base": req.get("base_label"), "tolerance": req.get("tolerance"),
        "created_at": view["created_at"], "updated_at": view["updated_at"], "progress": view["progress"],
        "checkpoints": len(cps),
        "final": None if last is None else {"name": last["name"], "step": last["step"],
                                            "analysis": last["analysis"]["id"],
                                            "sparsity": last["analysis"].get("sparsity")},
    }


def recent_runs(store: Store, settings: Settings, offset: int, limit: int) -> dict:
    total, rows = store.recent_training_runs(offset, limit)
    return {"items": [list_item(store, settings, raw) for raw in rows], "total": total,
            "offset": offset, "limit": limit}
