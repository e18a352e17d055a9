"""/api/overlaps: how much the changed subnetworks of two or three analyses coincide."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.api.deps import get_app_settings, get_store
from app.jobs import Refused, submit_overlap, valid_id
from app.schemas import ErrorBody, Overlap, OverlapRequest, Submission
from app.settings import Settings
from app.store import Store
from app.views import iso

router = APIRouter(prefix="/api/overlaps", tags=["overlaps"])


@router.post("", status_code=202, response_model=Submission, responses={
    404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def submit(body: OverlapRequest, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Overlap of finished analyses of one base at one tolerance (computed by a worker from their masks)."""
    sub = submit_overlap(store.r, settings, body.analyses)
    return JSONResponse({"id": sub.id, "status": sub.status, "url": f"/o/{sub.id}",
                         "api_url": f"/api/overlaps/{sub.id}"}, status_code=202 if sub.status != "done" else 200)


@router.get("/{overlap_id}", response_model=Overlap, responses={404: {"model": ErrorBody}})
def read(overlap_id: str, store: Store = Depends(get_store)):
    raw = store.get_overlap_raw(overlap_id) if valid_id(overlap_id) else None
    if raw is None:
        raise Refused(404, "unknown_overlap", f"No overlap with id {overlap_id!r}.")
    return {
        "id": overlap_id,
        "status": raw["status"],
        "analyses": json.loads(raw["request"])["analyses"],
        "error": json.loads(raw["error"]) if raw.get("error") else None,
        "created_at": iso(raw.get("created_at")),
        "updated_at": iso(raw.get("updated_at")),
        "result": json.loads(raw["result"]) if raw.get("result") else None,
    }
