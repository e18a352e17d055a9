"""The dashboard's only way to data: the service's own JSON API, called in-process.

Requests go through `httpx.ASGITransport` straight into the FastAPI app that
also serves the pages, so the UI sees exactly what API users see (status codes,
the 503 when Redis is down, validation messages) with no socket, no base URL
and no second copy of the store logic. Callbacks using it must be `async`:
Dash's FastAPI backend runs callbacks on the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def redis_down(self) -> bool:
        return self.status == 503


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or f"HTTP {resp.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's own validation errors
        return "; ".join(str(d.get("msg", d)) for d in detail)
    if isinstance(detail, dict):
        return str(detail.get("message") or detail)
    return str(detail or body)


class Api:
    def __init__(self, asgi_app: Any, cache_size: int = 16):
        self._transport = httpx.ASGITransport(app=asgi_app, raise_app_exceptions=False)
        # Finished analyses never change (content-addressed ids), so the page can
        # re-read them on every view change without re-fetching.
        self._done: OrderedDict[str, dict] = OrderedDict()
        self._cache_size = cache_size

    async def request(self, method: str, path: str, **kw) -> Any:
        async with httpx.AsyncClient(transport=self._transport, base_url="http://subnetscope",
                                     timeout=30.0) as client:
            resp = await client.request(method, path, **kw)
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _detail(resp))
        if not resp.content:
            return None
        return resp.json()

    async def analysis(self, analysis_id: str) -> dict:
        if analysis_id in self._done:
            self._done.move_to_end(analysis_id)
            return self._done[analysis_id]
        data = await self.request("GET", f"/api/analyses/{analysis_id}")
        if data.get("status") == "done" and data.get("result"):
            self._done[analysis_id] = data
            while len(self._done) > self._cache_size:
                self._done.popitem(last=False)
        return data

    async def recent(self, limit: int = 20) -> list[dict]:
        data = await self.request("GET", "/api/analyses", params={"limit": limit, "offset": 0})
        if isinstance(data, dict):
            data = data.get("items") or data.get("analyses") or []
        return list(data or [])

    async def health(self) -> dict:
        return await self.request("GET", "/api/health")


def message(err: Exception) -> str:
    """What to tell the user about a failed API call."""
    if isinstance(err, ApiError):
        if err.redis_down:
            return ("The service's Redis is unreachable, so analyses can't be read or "
                    "submitted right now (the API answers 503). Try again in a moment.")
        if err.status == 404:
            return "No such analysis or overlap (404). Check the link."
        return err.detail
    return f"Unexpected error talking to the API: {err}"
