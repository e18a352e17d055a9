"""Load: a burst of identical submissions computes once; a burst of readers gets no errors.

Latencies are printed (p50/p95/max), never asserted: CI machines and a shared box
make wall times noise. What is asserted is correctness under concurrency.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from api import get
from checkpoint_files import write_big_pair
from support.polling import wait_idle, wait_status

pytestmark = pytest.mark.timeout(300)

RUNS_STARTED = "subnetscope:stats:analysis_runs_started"


def burst(svc, n: int, call) -> list[tuple[float, httpx.Response]]:
    """`n` calls at once, each on its own connection; (seconds, response) for each."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with httpx.Client(base_url=svc.base_url, timeout=120, limits=limits) as client:
        def timed(i):
            started = time.perf_counter()
            response = call(client, i)
            return time.perf_counter() - started, response

        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(timed, range(n)))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


@pytest.fixture(scope="module")
def load_pair(svc):
    write_big_pair(svc.local_root / "rel" / "load", tensors=24, rows=256, cols=512, seed=9)
    return "local:rel/load/base", "local:rel/load/tuned"


def test_hundred_concurrent_identical_submissions_compute_once(svc, load_pair):
    wait_idle(svc)
    before = int(svc.redis.get(RUNS_STARTED) or 0)
    body = {"base": load_pair[0], "tuned": load_pair[1], "tolerance": 5.5e-6, "rank": "all"}
    results = burst(svc, 100, lambda client, i: client.post("/api/analyses", json=body))

    statuses = sorted({r.status_code for _, r in results})
    assert statuses in ([200], [202], [200, 202]), [r.text for _, r in results if r.status_code not in (200, 202)]
    ids = {r.json()["id"] for _, r in results}
    assert len(ids) == 1, ids
    (aid,) = ids
    final = wait_status(svc.client, aid, timeout=240)
    assert final["status"] == "done", final["error"]
    wait_idle(svc)

    assert int(svc.redis.get(RUNS_STARTED)) - before == 1, "more than one computation started"
    assert final["runs"] == 1
    # One job was ever enqueued: the worker log names each job it takes, with the analysis id.
    taken = [line for line in svc.log_text().splitlines() if f"subnetscope: analysis {aid} (" in line]
    assert len(taken) == 1, taken
    listing = svc.client.get("/api/analyses", params={"limit": 1000}).json()["items"]
    assert [i["id"] for i in listing].count(aid) == 1


def test_two_hundred_concurrent_result_reads(svc, load_pair, capsys):
    r = svc.client.post("/api/analyses", json={"base": load_pair[0], "tuned": load_pair[1], "tolerance": 5.6e-6,
                                                "rank": "all"})
    aid = r.json()["id"]
    expected = wait_status(svc.client, aid, timeout=240)
    assert expected["status"] == "done", expected["error"]

    paths = [f"/api/analyses/{aid}", f"/api/analyses/{aid}/tensors", "/api/analyses?limit=20"]
    results = burst(svc, 200, lambda client, i: client.get(paths[0] if i % 4 else paths[1 + (i // 4) % 2]))

    errors = [(r.request.url.path, r.status_code) for _, r in results if r.status_code != 200]
    assert errors == []
    for _, response in results:
        if response.request.url.path == paths[0]:
            assert response.json() == expected  # every reader got the whole, same result
        elif response.request.url.path.endswith("/tensors"):
            assert response.json()["tensors"] == expected["result"]["tensors"]
        else:
            assert aid in [i["id"] for i in response.json()["items"]]
    latencies = sorted(seconds * 1000 for seconds, _ in results)
    alone = []  # the same read with nobody else asking, for scale
    for _ in range(20):
        started = time.perf_counter()
        assert svc.client.get(paths[0]).status_code == 200
        alone.append((time.perf_counter() - started) * 1000)
    with capsys.disabled():
        print(f"\n200 concurrent reads ({len(expected['result']['tensors'])}-tensor result): "
              f"p50 {percentile(latencies, 50):.0f} ms, p95 {percentile(latencies, 95):.0f} ms, "
              f"max {latencies[-1]:.0f} ms; one reader alone: p50 {percentile(sorted(alone), 50):.1f} ms")
    assert get(svc.client, aid)["status"] == "done"
