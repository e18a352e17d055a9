"""/api/analyses: submit, read (status, progress, result), list, tensors, masks, retry."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from app.core.artifacts import artifact_store
from app.core.settings import Settings
from app.core.store import Store, analysis_key, dumps
from app.web import reads, views
from app.web.api.deps import get_app_settings, get_store
from app.web.resolving import names_hub
from app.web.schemas import Analysis, AnalysisList, AnalysisRequest, ErrorBody, Submission
from app.web.submission import Refused, retry_analysis, submit_analysis, valid_id

router = APIRouter(prefix="/api/analyses", tags=["analyses"])

REFUSALS = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody},
            429: {"model": ErrorBody}, 502: {"model": ErrorBody}, 503: {"model": ErrorBody},
            504: {"model": ErrorBody}}


def _raw_or_404(store: Store, analysis_id: str) -> dict[str, str]:
    raw = store.get_raw(analysis_id) if valid_id(analysis_id) else None
    if raw is None:
        raise Refused(404, "unknown_analysis", f"No analysis with id {analysis_id!r}.")
    return raw


@router.post("", status_code=202, response_model=Submission, responses=REFUSALS)
async def submit(body: AnalysisRequest, request: Request, store: Store = Depends(get_store),
                 settings: Settings = Depends(get_app_settings)):
    """Submit a pair; the same pair and options always get the same id and one computation.

    Resolved in a pool of its own (app/web/resolving.py), never the one reads use; a pair naming a
    Hub repo that the Hub does not resolve in time is answered 504 `hub_unavailable`."""
    def run(deadline):
        return submit_analysis(store.r, settings, base=body.base, tuned=body.tuned, base_revision=body.base_revision,
                               tuned_revision=body.tuned_revision, tolerance=body.tolerance, rank=body.rank,
                               token=body.token, geometry=body.geometry, base_subfolder=body.base_subfolder,
                               tuned_subfolder=body.tuned_subfolder, base_file=body.base_file,
                               tuned_file=body.tuned_file, deadline=deadline)

    hub = names_hub(body.base, body.tuned)
    sub = await request.app.state.resolver.run(run, hub=hub, what=" and ".join(
        s for s in (body.base, body.tuned) if s and not s.startswith("local:")) or "the LoRA adapter's base")
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


@router.get("/{analysis_id}", response_model=Analysis, responses={304: {"description": "Not modified (ETag)"},
                                                                  404: {"model": ErrorBody}})
async def read(analysis_id: str, request: Request, store: Store = Depends(get_store),
               settings: Settings = Depends(get_app_settings)):
    """Status, progress and, once done, the result (schema 1). A finished one is served from memory
    with an ETag (304 on If-None-Match) and gzipped when asked (app/web/reads.py)."""
    if not valid_id(analysis_id):
        _raw_or_404(store, analysis_id)

    def load():
        raw = _raw_or_404(store, analysis_id)
        status = views.status_of(raw, store.is_alive(analysis_id), settings.stall_seconds)
        partial = store.partial(analysis_id) if status != "done" else None
        # The result is spliced in as stored: it can be megabytes, and re-encoding it buys nothing.
        body = views.analysis_json(raw, status, partial)
        if status == "done":
            return reads.encode(body, "application/json", reads.validator(raw))
        return Response(body, media_type="application/json")

    return await request.app.state.reads.serve(request, ("analysis", analysis_id), analysis_key(analysis_id), load)


@router.get("/{analysis_id}/tensors", responses={404: {"model": ErrorBody}, 200: {
    "content": {"application/json": {}, "text/csv": {}}, "description": "Per-tensor records."}})
async def tensors(analysis_id: str, request: Request, format: str = Query("json", pattern="^(json|csv)$"),
                  store: Store = Depends(get_store)):
    """Per-tensor records: the result's when done, the finished ones so far otherwise."""
    if not valid_id(analysis_id):
        _raw_or_404(store, analysis_id)

    def load():
        raw = _raw_or_404(store, analysis_id)
        if raw["status"] == "done":
            result = json.loads(raw["result"])
            records, tolerances, partial = result["tensors"], result.get("tolerances"), False
        else:
            records = [json.loads(x) for x in store.partial(analysis_id)]
            tolerances, partial = None, True
        if format == "csv":
            body, media = views.tensors_csv(records, tolerances), "text/csv; charset=utf-8"
            headers = {"Content-Disposition": f'attachment; filename="subnetscope-{analysis_id}-tensors.csv"'}
        else:
            body = dumps({"id": analysis_id, "status": raw["status"], "partial": partial, "tensors": records})
            media, headers = "application/json", {}
        if not partial:
            return reads.encode(body, media, reads.validator(raw), headers)
        return Response(body, media_type=media, headers=headers)

    return await request.app.state.reads.serve(request, ("tensors", format, analysis_id), analysis_key(analysis_id),
                                               load)


@router.get("/{analysis_id}/masks", response_class=FileResponse, responses={
    404: {"model": ErrorBody}, 409: {"model": ErrorBody},
    200: {"content": {"application/octet-stream": {}}, "description": "masks.safetensors (packed bits)"}})
def masks(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Masks of changed elements at the analysis tolerance, as safetensors (see docs/CONTRACTS.md)."""
    return FileResponse(_masks_path(store, settings, analysis_id), media_type="application/octet-stream",
                        filename=f"subnetscope-{analysis_id}-masks.safetensors")


@router.get("/{analysis_id}/tensors/{name:path}/density", responses={404: {"model": ErrorBody},
                                                                     409: {"model": ErrorBody}})
def tensor_density(analysis_id: str, name: str, bins: int = Query(256, ge=1, le=1024),
                   store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Where one tensor's changed elements lie: rows x columns binned to at most `bins` x `bins`
    (share changed per cell) and histograms of the share changed per row and per column, streamed
    from the mask file in row blocks (docs/CONTRACTS.md)."""
    from worker.engine import EngineError
    from worker.engine.masks import density

    path = _masks_path(store, settings, analysis_id)
    try:
        return density(path, name, bins)
    except EngineError as exc:
        raise Refused(404 if exc.code == "not_found" else 422, exc.code, exc.message) from None


def _masks_path(store: Store, settings: Settings, analysis_id: str) -> Path:
    raw = _raw_or_404(store, analysis_id)
    if raw["status"] != "done":
        raise Refused(409, "not_done", f"Analysis {analysis_id} is {raw['status']}; masks exist once it is done.")
    path = artifact_store(settings).masks_path(analysis_id)
    if path is None:
        raise Refused(404, "masks_missing", f"The mask file of analysis {analysis_id} is gone from the artifacts "
                                            "directory; retry the analysis to write it again.")
    return path


@router.post("/{analysis_id}/retry", status_code=202, responses={404: {"model": ErrorBody}})
def retry(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Run a failed or stalled analysis again; it resumes from its finished tensors."""
    _raw_or_404(store, analysis_id)
    return {"id": analysis_id, "status": retry_analysis(store.r, settings, analysis_id)}
