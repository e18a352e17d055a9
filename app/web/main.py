"""create_app: one ASGI app, the JSON API under /api and the Dash UI at /."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.core.refusals import REDIS_DOWN, Refused
from app.core.settings import Settings, get_settings
from app.core.store import Store, connect
from app.web.api import analyses, demo, health, lineage, overlaps, patches, runs
from app.web.guard import ServerTiming, SubmissionGuard
from app.web.reads import Reads
from app.web.resolving import Resolver

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("create_app needs settings.redis_url (`subnetscope serve` starts Redis when unset)")
    app = FastAPI(
        title="Subnetscope",
        description="Which parameters did a finetuning run actually change? Submit a base and a tuned "
                    "checkpoint, follow the analysis, read the result at its permalink.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.store = Store(connect(settings.redis_url))
    app.state.reads = Reads(settings.redis_url, settings.read_cache_bytes)  # finished results, in memory
    app.state.resolver = Resolver(settings)  # submissions resolve here, never in the pool reads use
    # The engine (torch) is imported now, before this process serves: imported by the first submission
    # instead, its seconds of holding the GIL would stall every read this process is serving meanwhile.
    import worker.engine  # noqa: F401
    # Outermost last: timing sees everything, the guard runs before any route.
    app.add_middleware(SubmissionGuard, settings=settings, reads_getter=lambda: app.state.reads)
    app.add_middleware(ServerTiming)

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused):
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_down(_: Request, exc: Exception):
        log.warning("Redis unavailable: %s", exc)
        return JSONResponse({"detail": REDIS_DOWN}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        # One readable sentence plus the field list; inputs are never echoed (one may be a token).
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                         for e in errors)
        return JSONResponse({"detail": {"code": "bad_request", "message": f"Invalid request: {text}.",
                                        "errors": errors}}, status_code=422)

    app.include_router(health.router)
    app.include_router(analyses.router)
    app.include_router(overlaps.router)
    app.include_router(patches.router)
    app.include_router(lineage.router)
    app.include_router(runs.router)
    app.include_router(demo.router)
    _mount_frontend(app, settings)
    return app


def app_from_env() -> FastAPI:
    """The factory each web process of a multi-process `serve` calls (settings from the environment).

    It dies with its parent (`serve`) even when that is killed outright, like the embedded children.
    """
    import sys

    if sys.platform.startswith("linux"):
        from app.core.processes import die_with_parent

        die_with_parent()
    return create_app(get_settings())


def _mount_frontend(app: FastAPI, settings: Settings) -> None:
    import frontend

    mount = getattr(frontend, "mount", None)
    if mount is None:  # the dashboard is optional while it is being built
        log.warning("frontend.mount is not available; serving the API only")
        return
    mount(app, settings)
