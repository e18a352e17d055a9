"""A user's Hub token opens a gated repo and then leaves no trace: not in Redis, logs or responses.

The gated repo lives on the loopback Hub, which refuses its files without the token,
so a finished analysis proves the token really reached the web app (to resolve the
revision and read headers) and the worker (to read the weights).
"""

from __future__ import annotations

import pytest
from api import submit
from hub_service import BASE, GATED, GATED_REVOCABLE, TOKEN, TOKEN_REVOCABLE, hub_and_service
from redis_scan import redis_contents, secret_holders
from support.polling import wait_status

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def hub_svc(tmp_path_factory):
    with hub_and_service(tmp_path_factory.mktemp("secrets")) as (hub, svc):
        yield hub, svc


def holders(svc, secret: str) -> list[str]:
    return secret_holders(svc.redis, secret)


def test_token_is_used_and_leaves_no_trace(hub_svc):
    hub, svc = hub_svc
    hub.clear_log()
    # Queued with no worker running, so RQ's job hashes exist while Redis is scanned.
    svc.stop_worker()
    try:
        r = submit(svc.client, BASE, GATED, tolerance=3.3e-5, token=TOKEN)
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        # A second run whose token is revoked before the worker gets to it: it fails, and
        # its failure (message, RQ job, logs) must not carry the token either.
        r = submit(svc.client, BASE, GATED_REVOCABLE, tolerance=3.3e-5, token=TOKEN_REVOCABLE)
        assert r.status_code == 202, r.text
        revoked = r.json()["id"]
        hub.gated[GATED_REVOCABLE].clear()

        contents = redis_contents(svc.redis)
        jobs = {k for k, _ in contents if k.startswith(b"rq:job:")}
        assert len(jobs) >= 2, "RQ's job hashes were not there to scan"
        # While queued, each token waits sealed in its short-lived hand-over key: in clear nowhere.
        assert holders(svc, TOKEN) == [] and holders(svc, TOKEN_REVOCABLE) == []
        assert svc.redis.exists(f"subnetscope:token:{aid}", f"subnetscope:token:{revoked}") == 2
        assert 0 < svc.redis.ttl(f"subnetscope:token:{aid}") <= 3600
    finally:
        svc.start_worker()

    body = wait_status(svc.client, aid, timeout=120)
    assert body["status"] == "done", body["error"]
    failed = wait_status(svc.client, revoked, timeout=120)
    assert failed["status"] == "failed" and failed["error"]["code"] == "gated", failed["error"]

    # The token was really used: the gated repo's files were requested with it (the Hub
    # refuses them otherwise, see test_hub_inputs.py gated_without_token).
    authorized = [q for q in hub.requests if q.authorization == f"Bearer {TOKEN}" and GATED in q.path]
    assert any("/resolve/" in q.path and q.status < 400 for q in authorized), "gated files read without the token"

    # Afterwards nothing of either token is in Redis: our records, the hand-over keys, RQ's jobs.
    for secret in (TOKEN, TOKEN_REVOCABLE):
        assert holders(svc, secret) == []

    # Nor in any process log (web, worker, redis-server).
    logs = sorted(svc.logs_dir.glob("*.log"))
    assert len(logs) >= 3
    for secret in (TOKEN, TOKEN_REVOCABLE):
        assert [f.name for f in logs if secret in f.read_text(errors="replace")] == []

    # Nor in anything the service hands out: records, the list, the permalink page, exports.
    for path in (f"/api/analyses/{aid}", f"/api/analyses/{revoked}", "/api/analyses?limit=1000",
                 f"/api/analyses/{aid}/tensors", f"/api/analyses/{aid}/tensors?format=csv",
                 f"/api/analyses/{aid}/masks", f"/a/{aid}", f"/a/{revoked}"):
        got = svc.client.get(path)
        assert got.status_code == 200, (path, got.status_code)
        assert TOKEN.encode() not in got.content and TOKEN_REVOCABLE.encode() not in got.content, path


def test_refused_token_is_not_echoed_or_logged(hub_svc):
    """A token that the Hub refuses: a clear refusal that neither repeats nor records it."""
    hub, svc = hub_svc
    wrong = "hf_WrongTokenForReliabilitySuite0000"
    r = submit(svc.client, BASE, GATED, tolerance=3.4e-5, token=wrong)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["code"] == "gated"
    assert wrong not in r.text
    bad = svc.client.post("/api/analyses", json={"base": BASE, "tuned": 7, "token": wrong})
    assert bad.status_code == 422 and wrong not in bad.text
    assert holders(svc, wrong) == []
    assert wrong not in svc.log_text()


def test_dash_debug_tools_are_off_outside_development(hub_svc):
    """Dev tools show tracebacks and server paths in the browser; `serve` runs without them."""
    import json
    import re

    hub, svc = hub_svc
    assert "SUBNETSCOPE_DEV" not in svc.env
    page = svc.client.get("/")
    assert page.status_code == 200
    match = re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', page.text, re.S)
    assert match, "no Dash config in the page"
    config = json.loads(match.group(1))
    assert config.get("ui") is False and config.get("props_check") is False, config
    assert ".dev.js" not in page.text, "development bundles are served"
