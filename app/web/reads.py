"""Reads of finished results: encoded once, kept in memory, revalidated with an ETag.

A finished analysis or overlap never changes (its id is derived from content, and
`done` is final: a retry, a resubmission or a late job leave it as it is), so its
response body is encoded once, gzipped once, and kept in a per-process LRU bounded
by bytes (`SUBNETSCOPE_READ_CACHE_BYTES`). A hit costs one Redis round trip on the
event loop, no thread: `HMGET status updated_at` confirms the record is still there
and still the one that was encoded (so a Redis outage still answers 503, and a record
recomputed after a lost Redis is never served stale). Concurrent misses of one key
share a single load.

Responses carry a strong ETag (sha256 of the identity body; the gzip representation
gets the same tag with `-gzip`, as representations must differ) and answer
`If-None-Match` with 304. Bodies over `GZIP_MIN_BYTES` are sent gzipped to clients
that accept it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 6
CACHE_CONTROL = "public, no-cache"  # may be stored, but revalidated (cheaply: 304) before use


@dataclass(frozen=True)
class Encoded:
    """One finished body, ready to send in either encoding."""

    body: bytes
    gz: bytes | None
    tag: str  # the ETag's opaque part for the identity body
    media_type: str
    validator: tuple  # what the stored record looked like when this was encoded
    headers: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gz or b"") + 256

    def respond(self, request: Request) -> Response:
        gzipped = self.gz is not None and accepts_gzip(request.headers.get("accept-encoding", ""))
        etag = f'"{self.tag}-gzip"' if gzipped else f'"{self.tag}"'
        headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": CACHE_CONTROL, **self.headers}
        if matches(request.headers.get("if-none-match"), self.tag):
            headers.pop("Content-Disposition", None)
            return Response(status_code=304, headers=headers)
        if gzipped:
            headers["Content-Encoding"] = "gzip"
            return Response(self.gz, media_type=self.media_type, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def encode(body: bytes | str, media_type: str, validator: tuple, headers: dict | None = None) -> Encoded:
    """Hash and (when large enough) gzip a body; CPU work, so called off the event loop."""
    data = body.encode() if isinstance(body, str) else body
    tag = hashlib.sha256(data).hexdigest()[:32]
    gz = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0) if len(data) >= GZIP_MIN_BYTES else None
    if gz is not None and len(gz) >= len(data):
        gz = None
    return Encoded(data, gz, tag, media_type, validator, dict(headers or {}))


def accepts_gzip(header: str) -> bool:
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and _float(q[2:]) == 0.0)
    return False


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


def matches(if_none_match: str | None, tag: str) -> bool:
    """Weak comparison (as If-None-Match requires), either representation's tag accepted."""
    if not if_none_match:
        return False
    for item in if_none_match.split(","):
        item = item.strip()
        if item == "*":
            return True
        item = item.removeprefix("W/").strip('"').removesuffix("-gzip")
        if item == tag:
            return True
    return False


class LRU:
    """Encoded bodies by key, the least recently used dropped first past `max_bytes`.

    Touched only from the event loop thread, so it needs no lock.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, Encoded] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Encoded | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, item: Encoded) -> None:
        self.drop(key)
        if item.size > self.max_bytes:
            return
        self._items[key] = item
        self.bytes += item.size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.size

    def drop(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size


class Reads:
    """The read cache of one web process, with the async Redis client that revalidates it."""

    def __init__(self, redis_url: str, max_bytes: int):
        self.redis_url = redis_url
        self.cache = LRU(max_bytes)
        self._redis: redis.asyncio.Redis | None = None
        self._loading: dict[Hashable, asyncio.Future] = {}

    @property
    def redis(self) -> redis.asyncio.Redis:
        # Made on first use, inside the server's event loop (its connections belong to that loop).
        if self._redis is None:
            # Retried like the sync client is by default (the async one is not): after a Redis restart
            # the first command on a pooled connection fails, and must reconnect rather than answer 503.
            self._redis = redis.asyncio.Redis.from_url(
                self.redis_url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=15,
                retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.02), 3),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
        return self._redis

    async def hit(self, key: Hashable, record_key: str) -> Encoded | None:
        """The cached body for `key` if the record at `record_key` is still the one it was made from."""
        item = self.cache.get(key)
        if item is None:
            return None
        status, updated = await self.redis.hmget(record_key, "status", "updated_at")
        if (_text(status), _text(updated)) == item.validator:
            return item
        self.cache.drop(key)
        return None

    async def load(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Run the blocking `fn` in the thread pool, once for all concurrent callers of `key`;
        an `Encoded` result is kept (when the cache is on)."""
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(run_in_threadpool(fn))
            self._loading[key] = future

            def done(f: asyncio.Future) -> None:
                if self._loading.get(key) is f:
                    del self._loading[key]
                if (not f.cancelled() and f.exception() is None and isinstance(f.result(), Encoded)
                        and self.cache.max_bytes > 0):
                    self.cache.put(key, f.result())

            future.add_done_callback(done)
        return await asyncio.shield(future)

    async def serve(self, request: Request, key: Hashable, record_key: str, fn: Callable[[], Any]) -> Any:
        """A cached body if valid, else whatever `fn` returns (an `Encoded` is sent and kept)."""
        if self.cache.max_bytes > 0:
            item = await self.hit(key, record_key)
            if item is not None:
                return item.respond(request)
        out = await self.load(key, fn)
        return out.respond(request) if isinstance(out, Encoded) else out

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def validator(raw: dict[str, str]) -> tuple:
    return raw.get("status"), raw.get("updated_at")


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
