"""/api/runs: training dynamics over a run's checkpoints (a group of analyses plus a reduce)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from app.core.settings import Settings
from app.core.store import Store
from app.web.api.deps import get_app_settings, get_store
from app.web.resolving import names_hub
from app.web.schemas import ErrorBody, Run, RunList, RunRequest, RunSubmission
from app.web.submission import Refused, valid_id
from app.web.training_runs import recent_runs, retry_run, run_view, submit_run

router = APIRouter(prefix="/api/runs", tags=["runs"])


def _raw_or_404(store: Store, run_id: str) -> dict[str, str]:
    raw = store.get_training_run(run_id) if valid_id(run_id) else None
    if raw is None:
        raise Refused(404, "unknown_run", f"No training run with id {run_id!r}.")
    return raw


@router.post("", status_code=202, response_model=RunSubmission, responses={
    422: {"model": ErrorBody}, 502: {"model": ErrorBody}, 503: {"model": ErrorBody}, 504: {"model": ErrorBody}})
async def submit(body: RunRequest, request: Request, store: Store = Depends(get_store),
                 settings: Settings = Depends(get_app_settings)):
    """Compare every checkpoint of a run with the base and with the one before; reduce when all are done.

    Resolved in the submissions' pool (app/web/resolving.py), like an analysis: a run naming a Hub repo
    that the Hub does not resolve in time is answered 504 `hub_unavailable`, nothing recorded."""
    revisions = ",".join(body.revisions) if isinstance(body.revisions, list) else body.revisions

    def run(deadline):
        return submit_run(store.r, settings, base=body.base, run=body.run, revisions=revisions,
                          tolerance=body.tolerance, token=body.token, deadline=deadline)

    sub = await request.app.state.resolver.run(run, hub=names_hub(body.base or "local:", body.run),
                                               what=f"the revisions of {body.run}")
    status = run_view(store, settings, sub.id, _raw_or_404(store, sub.id))["status"]
    return JSONResponse({"id": sub.id, "status": status, "url": f"/r/{sub.id}", "api_url": f"/api/runs/{sub.id}"},
                        status_code=200 if status == "done" else 202)


@router.get("", response_model=RunList)
def recent(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=200),
           store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Recent training runs, newest first: status, progress and the final checkpoint's sparsity (no result)."""
    return recent_runs(store, settings, offset, limit)


@router.get("/{run_id}", response_model=Run, responses={404: {"model": ErrorBody}})
def read(run_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Per-checkpoint status and progress of the run's analyses and, once reduced, the dynamics."""
    raw = _raw_or_404(store, run_id)
    head = json.dumps(run_view(store, settings, run_id, raw))[:-1]
    result = raw.get("result") if raw.get("status") == "done" else None
    return Response(f'{head}, "result": {result or "null"}}}', media_type="application/json")


@router.post("/{run_id}/retry", status_code=202, responses={404: {"model": ErrorBody}})
def retry(run_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Run the run's failed analyses (and a failed reduce) again; finished work is reused."""
    _raw_or_404(store, run_id)
    retry_run(store.r, settings, run_id)
    return {"id": run_id, "status": run_view(store, settings, run_id, _raw_or_404(store, run_id))["status"]}
