"""Redis down: the API says so with 503 and a clear message; back up, nothing was lost."""

from __future__ import annotations

import time

import pytest
from service_helpers import done, submit

pytestmark = pytest.mark.timeout(300)


def test_redis_down_gives_503_and_results_survive_a_restart(svc, keeps_serving):
    before = done(svc.client, svc.demo("base"), svc.demo("sft"), tolerance=7e-6)
    time.sleep(1.5)  # appendfsync everysec: let the AOF reach the disk
    with keeps_serving():
        svc.kill_redis()
        try:
            for method, path, body in (("GET", "/api/health", None),
                                       ("GET", f"/api/analyses/{before['id']}", None),
                                       ("GET", "/api/analyses", None),
                                       ("POST", "/api/analyses", {"base": svc.demo("base"),
                                                                  "tuned": svc.demo("rl_b"), "tolerance": 7e-6})):
                r = svc.client.request(method, path, json=body)
                assert r.status_code == 503, (path, r.status_code, r.text)
                detail = r.json()["detail"]
                assert detail["code"] == "redis_unavailable" and "redis" in detail["message"].lower()
        finally:
            svc.start_redis()
        after = svc.client.get(f"/api/analyses/{before['id']}").json()
        assert after["status"] == "done" and after["result"] == before["result"]
        # The refused POST left nothing behind.
        refused = submit(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=7e-6)
        assert refused.status_code == 202, refused.text
        deadline = time.monotonic() + 60
        while svc.client.get("/api/health").json()["workers"] < 1:  # the worker reconnects by itself
            assert time.monotonic() < deadline, "the worker did not come back after Redis restarted"
            time.sleep(0.2)
