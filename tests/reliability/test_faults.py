"""Faults: the worker or Redis SIGKILLed in the middle of things.

The analyses here run on a pair written by `write_big_pair` with update rank on, so a
run lasts seconds: long enough to kill something in the middle of it, short enough
for CI. Waits poll the API; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from api import get, submit
from checkpoint_files import write_big_pair
from rq import Queue
from services import run_holder, worker_is_present
from support.polling import wait_for, wait_idle, wait_status

pytestmark = pytest.mark.timeout(300)

RUNS_STARTED = "subnetscope:stats:analysis_runs_started"
TENSORS = 48


@pytest.fixture(scope="module")
def big_pair(svc):
    """(base id, tuned id, base dir, tuned dir); each test picks its own tolerance, hence its own analysis."""
    base, tuned = write_big_pair(svc.local_root / "rel" / "big", tensors=TENSORS, rows=384, cols=768, seed=3)
    return "local:rel/big/base", "local:rel/big/tuned", base, tuned


def start_big(svc, big_pair, tolerance: float) -> str:
    wait_idle(svc)
    r = submit(svc.client, big_pair[0], big_pair[1], tolerance=tolerance, rank="all")
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_some_finished(svc, aid: str, n: int = 3) -> dict:
    """Poll until the run has `n` finished tensors; fails if it finishes first."""

    def ready():
        body = get(svc.client, aid)
        assert body["status"] != "done", "finished before it could be interrupted; make the pair bigger"
        return body if body["status"] == "running" and len(body["partial"] or []) >= n else None

    return wait_for(ready, 120, f"{n} finished tensors of {aid}", interval=0.01)


def run_starts(svc, aid: str) -> list[int]:
    """From the worker logs: how many finished tensors each run of `aid` started with."""
    marker = f"analysis {aid}: run started ("
    return [int(line.split(marker)[1].split()[0]) for line in svc.log_text().splitlines() if marker in line]


def assert_counts_match_engine(result: dict, base_dir, tuned_dir) -> None:
    """The stitched result counts exactly what one uninterrupted engine run counts."""
    from worker.engine import AnalysisOptions, analyze, open_source, parse_source

    tolerance = result["options"]["tolerance"]
    with open_source(parse_source(str(base_dir), allow_any_path=True)) as b, \
            open_source(parse_source(str(tuned_dir), allow_any_path=True)) as t:
        expected = analyze(b, t, AnalysisOptions(tolerance=tolerance, rank="off", device="cpu"))
    got = {rec["name"]: rec for rec in result["tensors"]}
    assert list(got) == [rec["name"] for rec in expected["tensors"]]
    for rec in expected["tensors"]:
        for field in ("changed", "curve_changed", "nan", "ulp", "row_coverage", "col_coverage"):
            assert got[rec["name"]][field] == rec[field], (rec["name"], field)
        assert got[rec["name"]]["rank"] is not None
    assert result["summary"]["changed"] == expected["summary"]["changed"]
    assert result["summary"]["numel"] == expected["summary"]["numel"]


# --- the worker ------------------------------------------------------------------------


def test_worker_sigkilled_mid_analysis_is_shown_stalled_then_resumes(svc, big_pair):
    aid = start_big(svc, big_pair, 1.1e-5)
    wait_some_finished(svc, aid)
    svc.kill_worker()  # SIGKILL to the worker and its work horse
    finished_before = len(get(svc.client, aid)["partial"])

    stalled = wait_status(svc.client, aid, ("stalled", "done", "failed"), timeout=60)
    assert stalled["status"] == "stalled", stalled["status"]
    assert "worker" in stalled["stalled_reason"].lower()
    # Partial results are shown as partial, never as a result.
    assert stalled["result"] is None and 0 < len(stalled["partial"]) < TENSORS
    assert get(svc.client, aid)["status"] == "stalled"  # it stays stalled while no worker lives

    svc.start_worker()
    final = wait_status(svc.client, aid, timeout=240)
    assert final["status"] == "done", final["error"]
    assert final["runs"] == 2
    starts = run_starts(svc, aid)
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= finished_before, starts
    assert_counts_match_engine(final["result"], big_pair[2], big_pair[3])


def test_work_horse_sigkilled_is_picked_up_again_by_the_live_worker(svc, big_pair):
    """Only the process running the job dies (as under the OOM killer); the worker itself lives on."""
    worker_pid = svc.worker.pid
    aid = start_big(svc, big_pair, 1.2e-5)
    wait_some_finished(svc, aid)
    horse = run_holder(svc, aid)
    assert horse is not None, "no work horse found running the analysis"
    horse.send_signal(signal.SIGKILL)
    finished_before = len(get(svc.client, aid)["partial"])

    final = wait_status(svc.client, aid, timeout=240)
    assert final["status"] == "done", final["error"]
    assert final["runs"] == 2
    starts = run_starts(svc, aid)
    assert len(starts) == 2 and starts[1] >= finished_before, starts
    assert svc.worker.pid == worker_pid and svc.worker.poll() is None, "the worker itself should have lived"
    assert_counts_match_engine(final["result"], big_pair[2], big_pair[3])


def test_frozen_work_horse_is_shown_stalled_then_recovers(svc, big_pair):
    """A run that hangs (SIGSTOP: a wedged mount, a swapping box) reads stalled, not running, until it is over."""
    aid = start_big(svc, big_pair, 1.6e-5)
    wait_some_finished(svc, aid)
    horse = run_holder(svc, aid)
    assert horse is not None, "no work horse found running the analysis"
    horse.suspend()
    try:
        stalled = wait_status(svc.client, aid, ("stalled", "done", "failed"), timeout=60)
        assert stalled["status"] == "stalled", stalled["status"]
        assert stalled["stalled_reason"] and stalled["result"] is None and stalled["partial"]
    finally:
        horse.resume()
    # The thawed run finds its claim gone and stops; the run queued meanwhile finishes the job.
    final = wait_status(svc.client, aid, timeout=240)
    assert final["status"] == "done", final["error"]
    assert final["runs"] == 2
    assert len(final["result"]["tensors"]) == TENSORS
    assert_counts_match_engine(final["result"], big_pair[2], big_pair[3])


def test_finished_analysis_is_never_reflagged(svc, big_pair):
    """Kills, restarts, late retries and resubmissions leave a finished analysis exactly as it was."""
    aid = start_big(svc, big_pair, 1.3e-5)
    done = wait_status(svc.client, aid, timeout=240)
    assert done["status"] == "done", done["error"]
    runs_started = int(svc.redis.get(RUNS_STARTED))

    # The worker dies right after finishing, and comes back.
    svc.kill_worker()
    svc.start_worker()
    # A stale job for it (as RQ's own retry of an earlier, killed run would be) runs late.
    stale = Queue("subnetscope", connection=svc.redis).enqueue("worker.tasks.run_analysis", aid, result_ttl=300)
    # A user asks for a retry and submits the same pair again.
    assert svc.client.post(f"/api/analyses/{aid}/retry").json()["status"] == "done"
    again = submit(svc.client, big_pair[0], big_pair[1], tolerance=1.3e-5, rank="all")
    assert again.status_code == 200 and again.json() == {**again.json(), "id": aid, "status": "done"}

    def stale_job_done():
        stale.refresh()
        return stale.get_status() in ("finished", "failed")

    wait_for(stale_job_done, 60, "the stale job to run")
    assert stale.return_value() == "done"
    # Several janitor rounds and more than a liveness period pass; it is never touched.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = get(svc.client, aid)
        assert now["status"] == "done" and now["error"] is None and now["runs"] == done["runs"], now["status"]
        time.sleep(0.25)
    assert now["result"] == done["result"]
    assert int(svc.redis.get(RUNS_STARTED)) == runs_started


def test_analysis_whose_worker_keeps_dying_ends_failed_with_a_clear_reason(svc, big_pair):
    """A run killed every time (a checkpoint that brings the OOM killer) is failed after a bound, not looped."""
    from app.core.store import MAX_LOST_ATTEMPTS

    aid = start_big(svc, big_pair, 1.5e-5)
    killed: list[int] = []

    def next_run():
        body = get(svc.client, aid)
        if body["status"] in ("done", "failed"):
            return body
        horse = run_holder(svc, aid)
        return horse if horse is not None and horse.pid not in killed else None

    while len(killed) <= MAX_LOST_ATTEMPTS + 1:
        seen = wait_for(next_run, 120, f"run {len(killed) + 1} of {aid} to start")
        if isinstance(seen, dict):
            break
        seen.send_signal(signal.SIGKILL)
        killed.append(seen.pid)
    kills = len(killed)
    final = wait_status(svc.client, aid, timeout=120)
    assert final["status"] == "failed", f"still {final['status']} after {kills} killed runs"
    assert kills == MAX_LOST_ATTEMPTS, kills
    assert final["error"]["code"] == "worker_lost", final["error"]
    message = final["error"]["message"].lower()
    assert "died" in message and str(MAX_LOST_ATTEMPTS) in message and "retry" in message, message
    assert final["result"] is None
    # It stays failed: nothing picks it up again behind the user's back.
    wait_idle(svc)
    assert get(svc.client, aid)["status"] == "failed"

    # An explicit retry resumes it, and a healthy run finishes it.
    assert svc.client.post(f"/api/analyses/{aid}/retry").json()["status"] == "queued"
    done = wait_status(svc.client, aid, timeout=240)
    assert done["status"] == "done", done["error"]
    assert_counts_match_engine(done["result"], big_pair[2], big_pair[3])


# --- Redis -------------------------------------------------------------------------------


def aof_written(svc) -> bool:
    """Every acknowledged write has reached the AOF file (a SIGKILL cannot lose it then)."""
    info = svc.redis.info("persistence")
    return info["aof_enabled"] == 1 and info["aof_buffer_length"] == 0 and info["aof_pending_bio_fsync"] == 0


def finished_analyses(svc) -> dict[str, dict]:
    items = svc.client.get("/api/analyses", params={"limit": 1000}).json()["items"]
    return {i["id"]: get(svc.client, i["id"]) for i in items if i["status"] == "done"}


def assert_redis_down_answers(svc, known_id: str) -> None:
    """While Redis is down every API call that needs it answers 503 with a clear message."""
    calls = (("GET", "/api/health", None), ("GET", f"/api/analyses/{known_id}", None), ("GET", "/api/analyses", None),
             ("GET", f"/api/analyses/{known_id}/tensors", None), ("POST", f"/api/analyses/{known_id}/retry", None),
             ("POST", "/api/analyses", {"base": svc.demo("base"), "tuned": svc.demo("rl_b"), "tolerance": 8.8e-6}),
             ("POST", "/api/overlaps", {"analyses": [known_id, known_id[::-1]]}))
    for method, path, body in calls:
        r = svc.client.request(method, path, json=body)
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        detail = r.json()["detail"]
        assert detail["code"] == "redis_unavailable", (path, detail)
        assert "redis" in detail["message"].lower() and len(detail["message"]) > 20, (path, detail)


def test_redis_sigkilled_and_restarted_loses_no_finished_analysis(svc, big_pair):
    for tolerance in (4.1e-6, 4.2e-6, 4.3e-6):
        r = submit(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=tolerance)
        assert wait_status(svc.client, r.json()["id"], timeout=120)["status"] == "done"
    before = finished_analyses(svc)  # these and every analysis the earlier tests finished
    assert len(before) >= 3
    known = next(iter(before))

    wait_for(lambda: aof_written(svc), 30, "the AOF to be written")
    svc.kill_redis()  # SIGKILL: no shutdown save, only the AOF brings data back
    try:
        assert_redis_down_answers(svc, known)
        assert svc.worker.poll() is None, "the worker died with Redis"
    finally:
        svc.start_redis()

    after = finished_analyses(svc)
    assert set(before) <= set(after), f"lost: {sorted(set(before) - set(after))}"
    for aid, body in before.items():
        assert after[aid]["result"] == body["result"], aid
        assert after[aid]["runs"] == body["runs"] and after[aid]["created_at"] == body["created_at"]
    # The worker reconnects by itself and takes new work.
    wait_for(lambda: svc.client.get("/api/health").json()["workers"] >= 1, 60, "the worker to reconnect")
    r = submit(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=8.8e-6)
    assert r.status_code == 202, r.text  # the submission refused while Redis was down left nothing behind
    assert wait_status(svc.client, r.json()["id"], timeout=120)["status"] == "done"


def test_redis_sigkilled_mid_analysis_the_analysis_still_completes(svc, big_pair):
    aid = start_big(svc, big_pair, 1.4e-5)
    wait_some_finished(svc, aid)
    svc.kill_redis()
    try:
        r = svc.client.get(f"/api/analyses/{aid}")
        assert r.status_code == 503 and r.json()["detail"]["code"] == "redis_unavailable"
        time.sleep(1.0)  # an outage, not a blip: the worker's writes fail meanwhile
    finally:
        svc.start_redis()

    body = wait_status(svc.client, aid, timeout=240)
    if body["status"] == "failed":  # allowed, if it says why and a retry then finishes it
        assert body["error"]["message"] and body["error"]["code"] != "internal", body["error"]
        assert svc.client.post(f"/api/analyses/{aid}/retry").status_code in (200, 202)
        body = wait_status(svc.client, aid, timeout=240)
    assert body["status"] == "done", body["error"]
    assert_counts_match_engine(body["result"], big_pair[2], big_pair[3])
    wait_for(lambda: worker_is_present(svc, svc.worker_names[-1]), 60, "the worker to announce itself again")
    assert json.loads(svc.redis.hget(f"subnetscope:analysis:{aid}", "summary"))["tensors"] == TENSORS
