"""/api/lineage: which of several candidates is a checkpoint's parent (sampled, by range reads)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.core.ids import valid_id
from app.core.lineage_jobs import DONE, MAX_CANDIDATES, get_lineage, submit_lineage
from app.core.refusals import Refused
from app.core.settings import Settings
from app.core.store import Store
from app.web.api.deps import get_app_settings, get_store

router = APIRouter(prefix="/api/lineage", tags=["lineage"])


class LineageRequest(BaseModel):
    tuned: str = Field(min_length=1, max_length=300, description="org/name[@rev] or local:dir")
    candidates: list[str] = Field(min_length=1, max_length=MAX_CANDIDATES)
    budget: float = Field(0.015, gt=0, le=0.05, description="share of each candidate's bytes read")
    seed: int = Field(0, ge=0, le=2**31)


@router.post("", status_code=202)
def submit(body: LineageRequest, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Rank the candidates by the share of sampled matrix elements bit-identical to `tuned` (docs/METRICS.md)."""
    if any(not c.strip() or len(c) > 300 for c in body.candidates):
        raise Refused(422, "bad_id", "Every candidate must be a model id (org/name[@rev]) or local:dir.")
    state = submit_lineage(store.r, settings, body.tuned.strip(), [c.strip() for c in body.candidates],
                           body.budget, body.seed)
    job_id = state["id"]
    return JSONResponse({"id": job_id, "status": state["status"], "url": f"/l/{job_id}",
                         "api_url": f"/api/lineage/{job_id}"}, status_code=200 if state["status"] == DONE else 202)


@router.get("/{job_id}")
def read(job_id: str, store: Store = Depends(get_store)):
    """Status and, once done, the ranked candidates with intervals, per-layer shares and mismatches."""
    state = get_lineage(store.r, job_id) if valid_id(job_id) else None
    if state is None:
        raise Refused(404, "unknown_lineage", f"No lineage request with id {job_id!r}.")
    return state
