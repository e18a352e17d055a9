"""What every noun of the store shares: the key prefix, liveness timings, statuses, the
connection, the Lua scripts (lua/*.lua, registered once per connection) and JSON encoding."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from importlib.resources import files
from weakref import WeakKeyDictionary

import redis
from redis.commands.core import Script

PREFIX = "subnetscope"

# An attempt holds its liveness key while it works; the key's expiry is how a dead worker is noticed.
ALIVE_TTL_S = 6
ALIVE_REFRESH_S = 1.0

# Statuses as stored. "stalled" is never stored: it is derived on read.
QUEUED, RUNNING, FAILED, DONE = "queued", "running", "failed", "done"

# Attempts (of an analysis, a fan-out group or a reduce) that may die mid-way (worker killed, out of
# memory, Redis lost) before the work is failed instead of resumed once more: a checkpoint that kills
# every worker must not loop forever.
MAX_LOST_ATTEMPTS = 3


class KeyTemplate:
    """A noun's one key template: `subnetscope:<noun>:<id>` (its record), and the keys beside it,
    `subnetscope:<noun>:<id>:<suffix>...` (its liveness, parts, ...)."""

    def __init__(self, noun: str):
        self.prefix = f"{PREFIX}:{noun}:"

    def __call__(self, id_: str, *suffix: object) -> str:
        return self.prefix + ":".join((id_, *map(str, suffix)))

    def beside(self, *suffix: str) -> Callable[[str], str]:
        """The key `<id>:<suffix>` as a function of the id."""
        return lambda id_: self(id_, *suffix)


def connect(url: str) -> redis.Redis:
    # Short connect timeout so the API answers 503 promptly when Redis is down.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=15)


_SOURCES = {f.name.removesuffix(".lua"): f.read_text() for f in files(__package__).joinpath("lua").iterdir()
            if f.name.endswith(".lua")}
_REGISTERED: WeakKeyDictionary[redis.Redis, dict[str, Script]] = WeakKeyDictionary()


class Keyed:
    """Base of the store's nouns: a connection and its scripts."""

    r: redis.Redis

    def _lua(self, name: str, keys: list, args: list):
        """Run lua/<name>.lua (EVALSHA, loaded again by redis-py if the server forgot it)."""
        scripts = _REGISTERED.get(self.r)
        if scripts is None:
            scripts = _REGISTERED[self.r] = {n: self.r.register_script(src) for n, src in _SOURCES.items()}
        return scripts[name](keys=keys, args=args)

    def _newest(self, recent: str, key: Callable[[str], str], fields: tuple[str, ...], offset: int,
                limit: int) -> tuple[int, list[list[bytes | None]]]:
        """Newest first from a recent zset: (total, the `fields` of each record still there, raw)."""
        ids = [i.decode() for i in self.r.zrevrange(recent, offset, offset + limit - 1)]
        with self.r.pipeline() as p:
            for i in ids:
                p.hmget(key(i), *fields)
            rows = p.execute()
            total = self.r.zcard(recent)
        return total, [row for row in rows if row[0] is not None]

    @staticmethod
    def _end(p: redis.client.Pipeline, key: str, status: str, result: dict | None, error: dict | None,
             **extra: str) -> None:
        """Queue on `p` the fields that end a record: its status, when, its result (JSON without NaN) or
        error, and `extra`; a record done at last loses the error of an earlier attempt."""
        now = repr(time.time())
        fields = {"status": status, "updated_at": now, "ended_at": now, **extra}
        if result is not None:
            fields["result"] = dumps(result)
        if error is not None:
            fields["error"] = json.dumps(error)
        p.hset(key, mapping=fields)
        if status == DONE:
            p.hdel(key, "error")

    def _hash(self, key: str) -> dict[str, str] | None:
        raw = self.r.hgetall(key)
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None


def enc(v) -> str:
    return v if isinstance(v, str) else dumps(v)


def dumps(obj) -> str:
    """JSON as every client can parse it: NaN and infinities (not JSON) become null."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
