"""ASGI middleware of the web app: who may submit, how often, and how long answers take.

`SubmissionGuard` applies to every POST (PUT, PATCH, DELETE) under /api, whichever
router serves it, so a new resource is covered without opting in:

- with `SUBNETSCOPE_API_TOKEN` set, the request needs `Authorization: Bearer <token>`
  (401 `unauthorized` otherwise); reads stay open so permalinks work;
- with `SUBNETSCOPE_SUBMIT_RATE` > 0, one client (its address as uvicorn reports it, so
  X-Forwarded-For from a trusted proxy) may make that many in any window of
  `SUBNETSCOPE_SUBMIT_RATE_WINDOW_S` seconds; past it, 429 `rate_limited` with Retry-After
  (when the oldest of them leaves the window). The times are kept in Redis, so every web
  process shares them. A sliding window, not fixed ones: with windows cut at fixed times a
  client could make twice the rate across a cut, and a burst of submissions was let through
  or refused depending on where in the minute it began.

The dashboard's own calls go through the same app in-process and carry the browser's
address and the token typed in its form (frontend/apiclient.py), so they are held to the
same rules as any client.

`ServerTiming` adds `Server-Timing: app;dur=<ms>` (time from the request reaching the app
to its response starting) so a load test can tell server time from queueing and network.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import time

import redis

from app.core.refusals import REDIS_DOWN
from app.core.settings import Settings
from app.core.store import PREFIX

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RATE_PREFIX = f"{PREFIX}:ratelimit:"


def _json(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    body = json.dumps({"detail": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": raw}, \
        {"type": "http.response.body", "body": body}


class SubmissionGuard:
    def __init__(self, app, settings: Settings, reads_getter):
        self.app = app
        token = settings.api_token.get_secret_value() if settings.api_token else ""
        self.token = token.encode() if token else None
        self.rate = settings.submit_rate
        self.window = settings.submit_rate_window_s
        self.reads_getter = reads_getter  # -> app.web.reads.Reads (its async Redis client), made at first use

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in UNSAFE or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        refusal = self._unauthorized(scope) or await self._over_rate(scope)
        if refusal is not None:
            start, body = refusal
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)

    def _unauthorized(self, scope):
        if self.token is None:
            return None
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return None
        message = ("This deployment takes submissions only with its API token: send `Authorization: Bearer "
                   "<token>` (in the dashboard, fill in the API token field of the form). Reading results needs "
                   "no token.") if not auth else "The API token given is not this deployment's; nothing was submitted."
        return _json(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="subnetscope"'})

    async def _over_rate(self, scope):
        if not self.rate:
            return None
        client = (scope.get("client") or ("unknown", 0))[0]
        now = time.time()
        key = f"{RATE_PREFIX}{client}"
        this = f"{now:.6f}-{secrets.token_hex(4)}"  # one member per request, even within a microsecond
        try:
            r = self.reads_getter().redis
            async with r.pipeline(transaction=True) as p:
                p.zremrangebyscore(key, "-inf", now - self.window)
                p.zadd(key, {this: now})
                p.zcard(key)
                p.zrange(key, 0, 0, withscores=True)
                p.expire(key, self.window + 1)
                _, _, count, oldest, _ = await p.execute()
            if count <= self.rate:
                return None
            await r.zrem(key, this)  # a refused request uses none of the allowance
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            start, body = _json(503, REDIS_DOWN["code"], REDIS_DOWN["message"])
            return start, body
        wait = max(1, math.ceil(oldest[0][1] + self.window - now))
        return _json(429, "rate_limited",
                     f"Too many submissions from {client}: this deployment takes {self.rate} in any "
                     f"{self.window} s from one client. Try again in {wait} s; nothing was submitted.",
                     {"Retry-After": str(wait)})


class ServerTiming:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - started) * 1000
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={ms:.2f}".encode())]}
            await send(message)

        await self.app(scope, receive, timed)
