"""Every key and value in a Redis, for tests that prove a secret is nowhere in it."""

from __future__ import annotations

import zlib


def redis_contents(r) -> list[tuple[bytes, bytes]]:
    """(key, value) for every key and every value in Redis, RQ's job hashes included.

    RQ stores a job's function call zlib-compressed in its hash (`data`), so each value
    is also scanned decompressed.
    """
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values = [r.get(key)]
        elif kind == "hash":
            values = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "none":  # expired or deleted between SCAN and TYPE
            continue
        elif kind == "stream":
            values = [x for _, fields in r.xrange(key) for kv in fields.items() for x in kv]
        else:
            raise AssertionError(f"unscanned Redis type {kind} for {key!r}")
        out.append((key, key))
        for v in values:
            if v is None:
                continue
            out.append((key, v))
            try:
                out.append((key, zlib.decompress(v)))
            except zlib.error:
                pass
    return out


def secret_holders(r, secret: str) -> list[str]:
    """Keys whose name or value holds `secret` in clear."""
    return sorted({k.decode() for k, v in redis_contents(r) if secret.encode() in v})
