"""/api/analyses/{id}/patch: export a finished analysis as a lossless patch, and download it."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse

from app.core.ids import valid_id
from app.core.patches import DONE, patch_path, patch_state, request_patch
from app.core.refusals import Refused
from app.core.settings import Settings
from app.core.store import Store
from app.web.api.deps import get_app_settings, get_store

router = APIRouter(prefix="/api/analyses", tags=["patches"])


def _analysis(store: Store, analysis_id: str) -> dict:
    raw = store.get_raw(analysis_id) if valid_id(analysis_id) else None
    if raw is None:
        raise Refused(404, "unknown_analysis", f"No analysis with id {analysis_id!r}.")
    return raw


def _body(analysis_id: str, state: dict | None) -> dict:
    return {"analysis": analysis_id, **(state or {"status": None, "progress": 0.0, "bytes": None, "share": None,
                                                  "error": None}),
            "download_url": f"/api/analyses/{analysis_id}/patch/file"}


@router.post("/{analysis_id}/patch", status_code=202)
def export(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """Queue the export of the analysis's lossless patch (docs/PATCHES.md); once per analysis."""
    raw = _analysis(store, analysis_id)
    if raw.get("status") != "done":
        raise Refused(409, "not_done", "The analysis has not finished; export its patch once it is done.")
    total = json.loads(raw.get("request") or "{}").get("total_bytes", 0)
    state = request_patch(store.r, settings, analysis_id, total)
    return JSONResponse(_body(analysis_id, state), status_code=200 if state and state["status"] == DONE else 202)


@router.get("/{analysis_id}/patch")
def status(analysis_id: str, store: Store = Depends(get_store)):
    """The export's status and progress (0..1); `bytes` and `share` once done."""
    _analysis(store, analysis_id)
    state = patch_state(store.r, analysis_id)
    if state is None:
        raise Refused(404, "no_patch", "No patch was requested for this analysis; POST to this url first.")
    return _body(analysis_id, state)


@router.get("/{analysis_id}/patch/file")
def download(analysis_id: str, store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    """The patch file (a safetensors container); apply it with `subnetscope patch apply BASE FILE -o DIR`."""
    _analysis(store, analysis_id)
    state = patch_state(store.r, analysis_id)
    path = patch_path(settings, analysis_id)
    if state is None or state["status"] != DONE or not path.is_file():
        raise Refused(404, "no_patch", "The patch is not ready; POST /api/analyses/{id}/patch and wait for done.")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{analysis_id}.patch.safetensors")
