"""The same pair and options give one id and one computation, however many times it is sent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from service_helpers import submit
from support.polling import wait_idle, wait_status

pytestmark = pytest.mark.timeout(300)

RUNS = "subnetscope:stats:analysis_runs_started"


def runs_started(svc) -> int:
    return int(svc.redis.get(RUNS) or 0)


def test_same_pair_twice_gives_the_same_id(svc):
    first = submit(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=1e-6).json()["id"]
    wait_status(svc.client, first)
    # Same content through another spelling of the path: the id is derived from content.
    again = submit(svc.client, "local:demo/./base", "local:demo/rl_a/", tolerance=1e-6)
    assert again.status_code == 200, again.text  # already done: nothing new to compute
    assert again.json()["id"] == first and again.json()["status"] == "done"
    other = submit(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=1e-7).json()["id"]
    assert other != first
    swapped = submit(svc.client, svc.demo("rl_a"), svc.demo("base"), tolerance=1e-6).json()["id"]
    assert swapped != first
    wait_status(svc.client, other)
    wait_status(svc.client, swapped)


def test_hundred_concurrent_identical_posts_make_one_computation(svc):
    wait_idle(svc)
    before = runs_started(svc)
    body = {"base": svc.demo("base"), "tuned": svc.demo("rl_b"), "tolerance": 4.2e-6}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    with httpx.Client(base_url=svc.base_url, timeout=120, limits=limits) as client:
        with ThreadPoolExecutor(max_workers=100) as pool:
            responses = list(pool.map(lambda _: client.post("/api/analyses", json=body), range(100)))
    assert all(r.status_code in (200, 202) for r in responses), {r.status_code for r in responses}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1, ids
    (aid,) = ids
    final = wait_status(svc.client, aid)
    assert final["status"] == "done", final["error"]
    wait_idle(svc)
    assert runs_started(svc) - before == 1
    assert final["runs"] == 1
    listing = svc.client.get("/api/analyses", params={"limit": 1000}).json()["items"]
    assert [i["id"] for i in listing].count(aid) == 1
