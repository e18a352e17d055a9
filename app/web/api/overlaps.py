"""/api/overlaps: how much the changed subnetworks of two or three analyses coincide."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.core.settings import Settings
from app.core.store import Store, dumps, overlap_key
from app.web import reads
from app.web.api.deps import get_app_settings, get_store
from app.web.schemas import ErrorBody, Overlap, OverlapRequest, Submission
from app.web.submission import Refused, submit_overlap, valid_id
from app.web.views import iso

router = APIRouter(prefix="/api/overlaps", tags=["overlaps"])


@router.post("", status_code=202, response_model=Submission, responses={
    404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def submit(body: OverlapRequest, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Overlap of finished analyses of one base at one tolerance (computed by a worker from their masks)."""
    sub = submit_overlap(store.r, settings, body.analyses)
    return JSONResponse({"id": sub.id, "status": sub.status, "url": f"/o/{sub.id}",
                         "api_url": f"/api/overlaps/{sub.id}"}, status_code=202 if sub.status != "done" else 200)


@router.get("/{overlap_id}", response_model=Overlap, responses={304: {"description": "Not modified (ETag)"},
                                                                 404: {"model": ErrorBody}})
async def read(overlap_id: str, request: Request, store: Store = Depends(get_store)):
    """Status and, once done, the overlap; a finished one is served from memory with an ETag (app/web/reads.py)."""
    def load():
        raw = store.get_overlap_raw(overlap_id) if valid_id(overlap_id) else None
        if raw is None:
            raise Refused(404, "unknown_overlap", f"No overlap with id {overlap_id!r}.")
        head = dumps({
            "id": overlap_id,
            "status": raw["status"],
            "analyses": json.loads(raw["request"])["analyses"],
            "error": json.loads(raw["error"]) if raw.get("error") else None,
            "created_at": iso(raw.get("created_at")),
            "updated_at": iso(raw.get("updated_at")),
        })
        # The result is spliced in as stored (already strict JSON), not decoded and encoded again.
        body = f'{head[:-1]}, "result": {raw.get("result") or "null"}}}'
        if raw["status"] == "done":
            return reads.encode(body, "application/json", reads.validator(raw))
        return Response(body, media_type="application/json")

    if not valid_id(overlap_id):
        return load()
    return await request.app.state.reads.serve(request, ("overlap", overlap_id), overlap_key(overlap_id), load)
