"""A Hub that hangs never stalls reads, and a Hub outage is told apart from a Redis outage.

The service points at a loopback Hub (tests/hubserver.py) that can be made to accept
connections and never answer. Submissions naming its repos are resolved in a pool of
their own with a time budget (app/web/resolving.py), so readers of a finished analysis keep
the latency they have on an idle service. Latencies are printed. What is asserted of them:
the median reader keeps its idle latency (a ratio measured in the same test, with a floor for
a loaded CI machine), and no read waits for the Hub (a read stalled behind it would take until
the Hub's budget runs out). Not the p95: with 50 readers on 2 cores it swings 150-900 ms
between idle runs alone (idle p95 216, 239, 898 and 253 ms in four CI runs), which the ratio
read as a stall once.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from api import submit
from hub_service import BASE, GATED, TOKEN, TUNED, write_repos
from hubserver import HubServer
from support.polling import wait_for, wait_status
from support.service import start_service

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

BUDGET_S = 12.0  # SUBNETSCOPE_HUB_TIMEOUT_S of this service (long enough for the reads to fit inside it)
READERS = 50
POSTS = 50
READ_S = 3.0


@pytest.fixture(scope="module")
def hub_svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("slowhub")
    write_repos(root / "repos")
    hub = HubServer(root / "repos").start()
    svc = None
    try:
        svc = start_service(root / "svc", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                            SUBNETSCOPE_HUB_TIMEOUT_S=str(BUDGET_S))
        yield hub, svc
    finally:
        hub.unhang()
        if svc is not None:
            svc.close()
        hub.stop()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94]


def read_for(svc, seconds: float, paths: list[str]) -> list[float]:
    """READERS clients, each reading `paths` in turn on its own connection for `seconds`; latencies (s)."""
    stop_at = time.monotonic() + seconds
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def reader(i: int) -> None:
        mine = []
        with httpx.Client(base_url=svc.base_url, timeout=60) as client:
            n = i
            while time.monotonic() < stop_at:
                path = paths[n % len(paths)]
                n += 1
                started = time.perf_counter()
                r = client.get(path)
                mine.append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code} {r.text[:200]}")
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(READERS) as pool:
        list(pool.map(reader, range(READERS)))
    assert errors == []
    return latencies


def wait_hub_quiet(hub, quiet_s: float = 2.0, timeout: float = 90.0) -> None:
    """Until the Hub has answered nothing for `quiet_s` (held requests retry about a second after
    they are let go, so this waits at least that long)."""
    time.sleep(1.5)

    def quiet() -> bool:
        with hub._lock:
            last = max((r.finished for r in hub.requests), default=0.0)
        return time.monotonic() - last >= quiet_s

    wait_for(quiet, timeout, "the Hub to go quiet", interval=0.2)


def test_hanging_hub_never_stalls_reads(hub_svc, capsys):
    hub, svc = hub_svc
    r = submit(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=9.1e-6)
    aid = r.json()["id"]
    assert wait_status(svc.client, aid, timeout=120)["status"] == "done"
    # A finished result (the cached path) and two reads that need the thread pool and Redis.
    paths = [f"/api/analyses/{aid}", "/api/analyses?limit=20", "/api/health"]
    read_for(svc, 1.0, paths)  # warm: connections, caches, imports
    idle = read_for(svc, READ_S, paths)

    hub.hang()
    outcomes: list[tuple[float, httpx.Response]] = []

    def post(i: int) -> None:
        with httpx.Client(base_url=svc.base_url, timeout=BUDGET_S + 60) as client:
            response = client.post("/api/analyses", json={"base": BASE, "tuned": TUNED, "tolerance": 2e-5 + i * 1e-9})
        outcomes.append((time.monotonic(), response))

    started = time.monotonic()
    posters = [threading.Thread(target=post, args=(i,)) for i in range(POSTS)]
    for t in posters:
        t.start()
    try:
        wait_for(lambda: hub.held >= 1, 30, "a submission to reach the hanging Hub")
        time.sleep(0.3)  # the burst of POSTs has landed
        loaded = read_for(svc, READ_S, paths)
        reads_ended = time.monotonic()
        for t in posters:
            t.join(BUDGET_S + 60)
    finally:
        hub.unhang()

    assert len(outcomes) == POSTS
    # Every submission was still waiting on the Hub while the readers read...
    assert min(at for at, _ in outcomes) >= reads_ended, "a submission ended before the reads did"
    # ...and each got a clear 504 within its budget (plus slack for a loaded machine), recording nothing.
    for at, response in outcomes:
        assert response.status_code == 504, response.text
        detail = response.json()["detail"]
        assert detail["code"] == "hub_unavailable" and "Hub" in detail["message"], detail
        assert at - started < BUDGET_S + 15
    # Idle again, after: the machine's own load (other jobs on a shared CI box) drifts, so the
    # reference is the worse of the two idle measurements around the loaded one. First the look-ups
    # the Hub held, let go now, retry and finish (the Hub answers them from this process).
    wait_hub_quiet(hub)
    idle_after = read_for(svc, READ_S, paths)
    idle_p95, loaded_p95 = max(p95(idle), p95(idle_after)), p95(loaded)
    idle_p50, loaded_p50 = max(statistics.median(idle), statistics.median(idle_after)), statistics.median(loaded)
    # The look-ups the Hub held have been let go meanwhile and finished late: they recorded nothing.
    listing = svc.client.get("/api/analyses", params={"limit": 1000}).json()["items"]
    assert not [i for i in listing if i["tuned"] == TUNED], "a submission answered 504 left a record"
    with capsys.disabled():
        print(f"\n{READERS} readers, idle: p50 {statistics.median(idle) * 1000:.1f} ms, p95 {p95(idle) * 1000:.1f} ms "
              f"({len(idle) / READ_S:.0f} req/s); with {POSTS} POSTs held by a hanging Hub ({hub.held} Hub "
              f"requests held): p50 {statistics.median(loaded) * 1000:.1f} ms, p95 {loaded_p95 * 1000:.1f} ms "
              f"({len(loaded) / READ_S:.0f} req/s); idle after: p95 {p95(idle_after) * 1000:.1f} ms")
    # Two of the three paths need the thread pool and Redis: a pool held by the Hub's look-ups
    # would move the median; a read held by the Hub would wait out its budget.
    assert loaded_p50 <= max(2 * idle_p50, idle_p50 + 0.100), (idle_p50, loaded_p50)
    assert max(loaded) < BUDGET_S / 2, (max(loaded), idle_p95, loaded_p95)


def test_hub_outage_and_redis_outage_have_distinct_codes(hub_svc):
    hub, svc = hub_svc
    # The Hub failing (5xx on every attempt): 502 hub_unavailable, the engine's own sentence about the Hub.
    # (A repo of its own: look-ups left over from the hang above may still be retrying on org/base and org/tuned.)
    hub.fail_next(5, status=503, retry_after=0, match=f"/api/models/{GATED}")
    r = submit(svc.client, BASE, GATED, tolerance=3.3e-5, token=TOKEN)
    assert r.status_code == 502, r.text
    detail = r.json()["detail"]
    assert detail["code"] == "hub_unavailable" and "Hub" in detail["message"], detail
    assert "redis" not in detail["message"].lower()

    # The Hub hanging: 504 hub_unavailable once the budget is spent.
    hub.hang()
    try:
        started = time.monotonic()
        r = submit(svc.client, BASE, TUNED, tolerance=3.4e-5)
        elapsed = time.monotonic() - started
    finally:
        hub.unhang()
    assert r.status_code == 504, r.text
    assert r.json()["detail"]["code"] == "hub_unavailable"
    assert BUDGET_S - 0.5 <= elapsed < BUDGET_S + 15, elapsed

    # The Hub answering again: the same pair is accepted.
    r = submit(svc.client, BASE, TUNED, tolerance=3.5e-5)
    assert r.status_code == 202, r.text
    assert wait_status(svc.client, r.json()["id"], timeout=120)["status"] == "done"

    # Redis down: 503 redis_unavailable, a different code and status.
    svc.kill_redis()
    try:
        r = submit(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=3.6e-5)
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert detail["code"] == "redis_unavailable" and "redis" in detail["message"].lower()
    finally:
        svc.start_redis()
