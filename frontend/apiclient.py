"""The dashboard's only way to data: the service's own JSON API, called in-process.

Requests go through `httpx.ASGITransport` straight into the FastAPI app that
also serves the pages, so the UI sees exactly what API users see (status codes,
the 503 when Redis is down, validation messages) with no socket, no base URL
and no second copy of the store logic. Callbacks using it must be `async`:
Dash's FastAPI backend runs callbacks on the event loop.

Each call carries the address of the browser whose callback made it (the API's
per-client submission limit applies to browsers, not to this process) and, when a
deployment requires one, the API token the user typed (`token=`). Bodies are asked for
uncompressed: gzip is for the network, and this call never leaves the process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import httpx

# Set by this module's transport only: an outside request cannot claim another client's address.
CLIENT_HEADER = b"x-subnetscope-browser"


class ApiError(Exception):
    def __init__(self, status: int, detail: str, code: str | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code

    @property
    def redis_down(self) -> bool:
        # 503 is Redis only; a Hub outage is 502/504 `hub_unavailable` and says so itself.
        return self.status == 503 and self.code in (None, "redis_unavailable")


def _code(resp: httpx.Response) -> str | None:
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        return None
    return detail.get("code") if isinstance(detail, dict) else None


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


class _InProcess:
    """The app as this client's transport sees it: the browser's address becomes the request's client."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            browser = next((v for k, v in scope["headers"] if k == CLIENT_HEADER), None)
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != CLIENT_HEADER]}
            if browser:
                scope["client"] = (browser.decode("latin-1"), 0)
        await self.app(scope, receive, send)


def _browser_address() -> str | None:
    """The address of the browser whose Dash callback is running, if any."""
    try:
        from dash.backends._fastapi import get_current_request

        client = get_current_request().client
    except Exception:  # noqa: BLE001 - no request in context (or another backend): none to forward
        return None
    return client.host if client else None


class Api:
    # Longer than a submission's Hub budget (SUBNETSCOPE_HUB_TIMEOUT_S): the API answers first.
    timeout_s = 120.0

    def __init__(self, asgi_app: Any, cache_size: int = 16, *, token_required: bool = False):
        self._transport = httpx.ASGITransport(app=_InProcess(asgi_app), raise_app_exceptions=False)
        self.token_required = token_required  # the deployment's POSTs need its API token
        # Finished analyses never change (content-addressed ids), so the page can
        # re-read them on every view change without re-fetching.
        self._done: OrderedDict[str, dict] = OrderedDict()
        self._cache_size = cache_size

    async def request(self, method: str, path: str, *, token: str | None = None, **kw) -> Any:
        headers = {"accept-encoding": "identity", **(kw.pop("headers", None) or {})}
        if token:
            headers["authorization"] = f"Bearer {token}"
        browser = _browser_address()
        if browser:
            headers[CLIENT_HEADER.decode()] = browser
        async with httpx.AsyncClient(transport=self._transport, base_url="http://subnetscope",
                                     timeout=self.timeout_s) as client:
            resp = await client.request(method, path, headers=headers, **kw)
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _detail(resp), _code(resp))
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
