"""A user's Hub token reaches the worker without landing in Redis records, job arguments or logs."""

from __future__ import annotations

import uuid
import zlib

import pytest

from service_helpers import submit, wait_status

pytestmark = pytest.mark.timeout(300)


def all_redis_bytes(r) -> list[bytes]:
    """Every key and value in Redis, with zlib-compressed values (RQ job data) opened too."""
    out = []
    for key in r.scan_iter(count=1000):
        out.append(key)
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
        else:
            values = []
        for v in values:
            if v is None:
                continue
            out.append(v)
            try:
                out.append(zlib.decompress(v))
            except zlib.error:
                pass
    return out


def test_token_is_never_stored_or_logged(svc):
    secret = f"hf_{uuid.uuid4().hex}"
    r = submit(svc.client, svc.demo("sft"), svc.demo("rl_a"), tolerance=6.5e-6, token=secret)
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    body = wait_status(svc.client, aid)
    assert body["status"] == "done", body["error"]
    assert secret not in str(body)
    assert not svc.redis.exists(f"subnetscope:token:{aid}"), "the hand-over key outlived the job"
    leaked = [v[:200] for v in all_redis_bytes(svc.redis) if secret.encode() in v]
    assert leaked == []
    assert secret not in svc.log_text()
    # A token in an invalid request is not echoed back either.
    bad = svc.client.post("/api/analyses", json={"base": svc.demo("sft"), "tuned": 5, "token": secret})
    assert bad.status_code == 422 and secret not in bad.text


def test_token_is_handed_over_while_the_job_waits(svc):
    """With no worker running, the queued job's token sits in its short-lived key only."""
    secret = f"hf_{uuid.uuid4().hex}"
    svc.stop_worker()
    try:
        r = submit(svc.client, svc.demo("sft"), svc.demo("rl_b"), tolerance=6.5e-6, token=secret)
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        key = f"subnetscope:token:{aid}"
        assert svc.redis.get(key), "the token's hand-over key is missing"
        assert 0 < svc.redis.ttl(key) <= 3600
        holders = [v[:120] for v in all_redis_bytes(svc.redis) if secret.encode() in v]
        assert holders == [], "the token is in Redis in clear"
        svc.redis.bgrewriteaof()  # what Redis keeps on disk: sealed too
        aof = b"".join(p.read_bytes() for p in svc.redis_server.directory.rglob("*.aof*") if p.is_file())
        assert aof and secret.encode() not in aof
    finally:
        svc.start_worker()
    assert wait_status(svc.client, aid)["status"] == "done"
    assert not svc.redis.exists(key)
