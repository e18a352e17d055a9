"""/api/analyses: submit, read (status, progress, result), list, tensors, masks, retry."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse, Response

from app import views
from app.api.deps import get_app_settings, get_store
from app.jobs import Refused, retry_analysis, submit_analysis, valid_id
from app.schemas import Analysis, AnalysisList, AnalysisRequest, ErrorBody, Submission
from app.settings import Settings
from app.store import Store

router = APIRouter(prefix="/api/analyses", tags=["analyses"])

REFUSALS = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


def _raw_or_404(store: Store, analysis_id: str) -> dict[str, str]:
    raw = store.get_raw(analysis_id) if valid_id(analysis_id) else None
    if raw is None:
        raise Refused(404, "unknown_analysis", f"No analysis with id {analysis_id!r}.")
    return raw


@router.post("", status_code=202, response_model=Submission, responses=REFUSALS)
def submit(body: AnalysisRequest, store: Store = Depends(get_store),
           settings: Settings = Depends(get_app_settings)):
    """Submit a pair; the same pair and options always get the same id and one computation."""
    sub = submit_analysis(store.r, settings, base=body.base, tuned=body.tuned, base_revision=body.base_revision,
                          tuned_revision=body.tuned_revision, tolerance=body.tolerance, rank=body.rank,
                          token=body.token)
    return JSONResponse(
        {"id": sub.id, "status": sub.status, "url": f"/a/{sub.id}", "api_url": f"/api/analyses/{sub.id}"},
        status_code=202 if sub.status != "done" else 200,
    )


@router.get("", response_model=AnalysisList)
def recent(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=1000),
           store: Store = Depends(get_store)):
    """Recent analyses, newest first."""
    total, rows = store.recent(offset, limit)
    return {"items": [views.list_item(row) for row in rows], "total": total, "offset": offset, "limit": limit}


@router.get("/{analysis_id}", response_model=Analysis, responses={404: {"model": ErrorBody}})
def read(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Status, progress and, once done, the result (schema 1)."""
    raw = _raw_or_404(store, analysis_id)
    status = views.status_of(raw, store.is_alive(analysis_id), settings.stall_seconds)
    partial = store.partial(analysis_id) if status != "done" else None
    # The result is spliced in as stored: it can be megabytes, and re-encoding it buys nothing.
    return Response(views.analysis_json(raw, status, partial), media_type="application/json")


@router.get("/{analysis_id}/tensors", responses={404: {"model": ErrorBody}, 200: {
    "content": {"application/json": {}, "text/csv": {}}, "description": "Per-tensor records."}})
def tensors(analysis_id: str, format: str = Query("json", pattern="^(json|csv)$"),
            store: Store = Depends(get_store)):
    """Per-tensor records: the result's when done, the finished ones so far otherwise."""
    raw = _raw_or_404(store, analysis_id)
    if raw["status"] == "done":
        result = json.loads(raw["result"])
        records, tolerances, partial = result["tensors"], result.get("tolerances"), False
    else:
        records = [json.loads(x) for x in store.partial(analysis_id)]
        tolerances, partial = None, True
    if format == "csv":
        return Response(views.tensors_csv(records, tolerances), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="subnetscope-{analysis_id}-tensors.csv"'})
    return {"id": analysis_id, "status": raw["status"], "partial": partial, "tensors": records}


@router.get("/{analysis_id}/masks", response_class=FileResponse, responses={
    404: {"model": ErrorBody}, 409: {"model": ErrorBody},
    200: {"content": {"application/octet-stream": {}}, "description": "masks.safetensors (packed bits)"}})
def masks(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Masks of changed elements at the analysis tolerance, as safetensors (see docs/CONTRACTS.md)."""
    raw = _raw_or_404(store, analysis_id)
    if raw["status"] != "done":
        raise Refused(409, "not_done", f"Analysis {analysis_id} is {raw['status']}; masks exist once it is done.")
    path = Path(settings.artifacts_dir) / analysis_id / "masks.safetensors"
    if not path.is_file():
        raise Refused(404, "masks_missing", f"The mask file of analysis {analysis_id} is gone from the artifacts "
                                            "directory; retry the analysis to write it again.")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"subnetscope-{analysis_id}-masks.safetensors")


@router.post("/{analysis_id}/retry", status_code=202, responses={404: {"model": ErrorBody}})
def retry(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Run a failed or stalled analysis again; it resumes from its finished tensors."""
    _raw_or_404(store, analysis_id)
    return {"id": analysis_id, "status": retry_analysis(store.r, settings, analysis_id)}
