"""Liveness of the service and of what it depends on."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from rq import Queue

from app.core.settings import Settings
from app.core.store import Store
from app.web.api.deps import get_app_settings, get_store
from app.web.schemas import ErrorBody, Health

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=Health, responses={503: {"model": ErrorBody}})
def health(store: Store = Depends(get_store), settings: Settings = Depends(get_app_settings)):
    from worker.engine import ENGINE_VERSION

    store.r.ping()  # a Redis failure becomes 503 through the app's handler
    queued = Queue(settings.queue, connection=store.r).count
    return JSONResponse({"status": "ok", "redis": "ok", "workers": store.live_workers(), "queued": queued,
                         "engine_version": ENGINE_VERSION})
