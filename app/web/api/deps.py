"""What a route needs from the app: settings and the Redis store."""

from __future__ import annotations

from fastapi import Request

from app.core.settings import Settings
from app.core.store import Store


# async, so FastAPI resolves them on the event loop instead of a thread-pool hop per request.
async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings
