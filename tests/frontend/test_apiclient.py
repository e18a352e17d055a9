"""The dashboard's in-process API client: whose call it is, which token, which outage."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request

from frontend.apiclient import Api, ApiError, message


def recording_app(status: int = 200, detail: dict | None = None):
    seen: list[dict] = []

    async def app(scope, receive, send):
        seen.append(scope)
        body = json.dumps({"detail": detail} if detail else {"ok": True}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app, seen


def browser_request(host: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/_dash-update-component", "headers": [],
                    "client": (host, 51234), "query_string": b""})


def call(api: Api, *args, browser: str | None = None, **kw):
    from dash.backends._fastapi import reset_current_request, set_current_request

    async def run():
        token = set_current_request(browser_request(browser)) if browser else None
        try:
            return await api.request(*args, **kw)
        finally:
            if token is not None:
                reset_current_request(token)

    # A loop of its own in a thread: another test (Playwright's sync API) may have left one running here.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def test_calls_carry_the_browsers_address_and_the_api_token():
    app, seen = recording_app()
    api = Api(app, token_required=True)
    call(api, "POST", "/api/analyses", json={"tuned": "x"}, token="tok-123", browser="203.0.113.7")
    scope = seen[-1]
    headers = dict(scope["headers"])
    assert scope["client"][0] == "203.0.113.7"  # rate limited as that browser, not as this process
    assert headers[b"authorization"] == b"Bearer tok-123"
    assert headers[b"accept-encoding"] == b"identity"  # never gzip in-process
    assert b"x-subnetscope-browser" not in headers  # consumed by the transport, never seen by the app
    call(api, "GET", "/api/health")  # outside a callback: no address to forward, no token
    assert b"authorization" not in dict(seen[-1]["headers"]) and seen[-1]["client"][0] != "203.0.113.7"


def test_hub_and_redis_outages_read_differently():
    for status, code, redis_down in ((503, "redis_unavailable", True), (502, "hub_unavailable", False),
                                     (504, "hub_unavailable", False)):
        app, _ = recording_app(status, {"code": code, "message": f"The API's own words for {code}."})
        try:
            call(Api(app), "POST", "/api/analyses", json={})
        except ApiError as err:
            assert err.code == code and err.redis_down is redis_down
            text = message(err)
            assert ("Redis" in text) is redis_down
            if not redis_down:
                assert text == f"The API's own words for {code}."
        else:
            raise AssertionError("no ApiError")
