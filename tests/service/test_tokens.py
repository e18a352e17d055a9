"""A user's Hub token reaches the worker without landing in Redis records, job arguments or logs."""

from __future__ import annotations

import uuid

import pytest
from redis_scan import secret_holders
from service_helpers import submit
from support.polling import wait_status

pytestmark = pytest.mark.timeout(300)


def test_token_is_never_stored_or_logged(svc):
    secret = f"hf_{uuid.uuid4().hex}"
    r = submit(svc.client, svc.demo("sft"), svc.demo("rl_a"), tolerance=6.5e-6, token=secret)
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    body = wait_status(svc.client, aid)
    assert body["status"] == "done", body["error"]
    assert secret not in str(body)
    assert not svc.redis.exists(f"subnetscope:token:{aid}"), "the hand-over key outlived the job"
    assert secret_holders(svc.redis, secret) == []
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
        assert secret_holders(svc.redis, secret) == [], "the token is in Redis in clear"
        svc.redis.bgrewriteaof()  # what Redis keeps on disk: sealed too
        aof = b"".join(p.read_bytes() for p in svc.redis_server.directory.rglob("*.aof*") if p.is_file())
        assert aof and secret.encode() not in aof
    finally:
        svc.start_worker()
    assert wait_status(svc.client, aid)["status"] == "done"
    assert not svc.redis.exists(key)
