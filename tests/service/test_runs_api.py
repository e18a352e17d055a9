"""POST /api/runs and GET /api/runs/{id} against the real service (web, Redis, RQ worker).

The run's numbers are checked against the float64 reference (tests/run_checkpoints.py),
its analyses against POST /api/analyses (same ids, computed once), and bad input against
"nothing recorded, nothing queued".
"""

from __future__ import annotations

import time

import pytest
import torch
from run_checkpoints import base_state, reference, save, train_step, write_run
from support.polling import wait_for, wait_for_status, wait_idle

from app.core.store import PENDING_TRAINING_RUNS

pytestmark = pytest.mark.timeout(600)

T = 1e-5


def wait_run(client, rid: str, statuses=("done", "failed"), timeout: float = 300.0) -> dict:
    return wait_for_status(client, f"/api/runs/{rid}", statuses, timeout, interval=0.1)


@pytest.fixture(scope="module")
def run_dirs(svc):
    root = svc.local_root / "runs" / "api"
    _, _, states = write_run(root)
    return "local:runs/api/base", "local:runs/api/run", states


def _keys(svc) -> set[bytes]:
    return set(svc.redis.scan_iter(match="subnetscope:*", count=1000))


def test_run_is_a_group_of_ordinary_analyses_reduced_to_the_reference(svc, run_dirs):
    base, run, states = run_dirs
    wait_idle(svc)
    started = int(svc.redis.get("subnetscope:stats:analysis_runs_started") or 0)
    r = svc.client.post("/api/runs", json={"base": base, "run": run, "tolerance": T})
    assert r.status_code == 202, r.text
    sub = r.json()
    rid = sub["id"]
    assert sub["url"] == f"/r/{rid}" and sub["api_url"] == f"/api/runs/{rid}"
    body = wait_run(svc.client, rid)
    assert body["status"] == "done", body["error"]
    assert body["phase"] == "done" and body["progress"]["checkpoints_done"] == 3
    assert body["progress"]["analyses_done"] == body["progress"]["analyses_total"] == 5  # 3 vs base + 2 consecutive
    # 5 computations, one per distinct analysis: (base, c_1) serves as the first consecutive update too
    assert int(svc.redis.get("subnetscope:stats:analysis_runs_started")) - started == 5
    cps = body["checkpoints"]
    assert [c["name"] for c in cps] == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert cps[0]["consecutive"]["id"] == cps[0]["analysis"]["id"]
    assert all(c["analysis"]["status"] == c["consecutive"]["status"] == "done" for c in cps)
    assert cps[1]["analysis"]["url"] == f"/a/{cps[1]['analysis']['id']}"

    # the same ids POST /api/analyses gives, already done
    again = svc.client.post("/api/analyses", json={"base": base, "tuned": f"{run}/checkpoint-200", "tolerance": T})
    assert again.status_code == 200 and again.json()["id"] == cps[1]["analysis"]["id"]
    consecutive = svc.client.post("/api/analyses", json={"base": f"{run}/checkpoint-200",
                                                         "tuned": f"{run}/checkpoint-300", "tolerance": T})
    assert consecutive.status_code == 200 and consecutive.json()["id"] == cps[2]["consecutive"]["id"]

    res = body["result"]
    ref = reference([states["base"], states[100], states[200], states[300]], T)
    assert res["numel"] == ref["numel"]
    for got, want in zip(res["checkpoints"], ref["checkpoints"]):
        for key in ("subnet", "ever_changed", "ever_outside", "final_both"):
            assert got[key] == want[key], key
        for tol, s in want["sparsity"].items():
            assert got["sparsity"][tol] == pytest.approx(s, rel=1e-12)
            assert got["consecutive"]["sparsity"][tol] == pytest.approx(want["consecutive"][tol], rel=1e-12)
    assert [row["stack"] for row in res["layers"]] == ["model.layers", "model.layers", None]
    assert res["checkpoints"][1]["analysis"] == cps[1]["analysis"]["id"]

    # submitted again: the same run, done, nothing computed
    r = svc.client.post("/api/runs", json={"base": base, "run": run, "tolerance": T})
    assert r.status_code == 200 and r.json() == {**sub, "status": "done"}
    assert int(svc.redis.get("subnetscope:stats:analysis_runs_started")) - started == 5


def test_existing_analyses_are_reused_and_base_defaults_to_the_first_checkpoint(svc, run_dirs):
    _, run, states = run_dirs
    wait_idle(svc)
    # (checkpoint-100, checkpoint-200) at t = 0 exists before the run asks for it
    pre = svc.client.post("/api/analyses", json={"base": f"{run}/checkpoint-100", "tuned": f"{run}/checkpoint-200",
                                                 "tolerance": 0.0})
    assert pre.status_code == 202
    r = svc.client.post("/api/runs", json={"run": run, "revisions": ["checkpoint-100", "checkpoint-200",
                                                                     "checkpoint-300"], "tolerance": 0.0})
    assert r.status_code == 202, r.text
    body = wait_run(svc.client, r.json()["id"])
    assert body["status"] == "done", body["error"]
    assert body["request"]["base_name"] == "checkpoint-100"
    assert [c["name"] for c in body["checkpoints"]] == ["checkpoint-200", "checkpoint-300"]
    assert body["checkpoints"][0]["analysis"]["id"] == pre.json()["id"]
    ref = reference([states[100], states[200], states[300]], 0.0)
    assert [c["ever_changed"] for c in body["result"]["checkpoints"]] == [c["ever_changed"] for c in ref["checkpoints"]]


def test_recent_runs_are_listed_newest_first_without_their_result(svc, run_dirs):
    base, run, _ = run_dirs
    r = svc.client.post("/api/runs", json={"base": base, "run": run, "tolerance": T})
    assert r.status_code in (200, 202), r.text
    rid = r.json()["id"]
    body = wait_run(svc.client, rid)
    assert body["status"] == "done", body["error"]
    listing = svc.client.get("/api/runs", params={"limit": 200})
    assert listing.status_code == 200, listing.text
    listing = listing.json()
    assert (listing["offset"], listing["limit"]) == (0, 200) and listing["total"] == len(listing["items"]) >= 1
    item = next(i for i in listing["items"] if i["id"] == rid)
    assert "result" not in item and "checkpoints" in item and item["checkpoints"] == 3
    assert (item["status"], item["phase"], item["url"], item["api_url"]) == ("done", "done", f"/r/{rid}",
                                                                              f"/api/runs/{rid}")
    assert item["run"] == body["run"]["id"] and item["base"] == base and item["tolerance"] == T
    assert item["progress"] == body["progress"] and item["created_at"] == body["created_at"]
    last = body["result"]["checkpoints"][-1]
    assert item["final"]["name"] == "checkpoint-300" and item["final"]["step"] == 300
    assert item["final"]["analysis"] == last["analysis"]
    assert item["final"]["sparsity"] == pytest.approx(last["sparsity"]["1e-05"], rel=1e-12)
    created = [i["created_at"] for i in listing["items"]]
    assert created == sorted(created, reverse=True)
    ids = [i["id"] for i in listing["items"]]
    second = svc.client.get("/api/runs", params={"offset": 1, "limit": 1}).json()
    assert [i["id"] for i in second["items"]] == ids[1:2] and second["total"] == listing["total"]
    assert svc.client.get("/api/runs", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize("request_body, code, words", [
    ({"run": "local:runs/api/run", "revisions": "step*"}, "revision_not_found", "matches no checkpoint"),
    ({"run": "local:runs/api/run", "revisions": "checkpoint-100,checkpoint-200"}, "bad_request", "at least 2"),
    ({"base": "local:runs/api/base", "run": "local:runs/api/run", "revisions": "checkpoint-200"}, "bad_request",
     "at least 2"),
    ({"run": "local:runs/many"}, "bad_request", "more than the limit of 64"),
    ({"base": "local:runs/mixed/base", "run": "local:runs/mixed/run"}, "arch_mismatch", "checkpoint-2"),
    ({"run": "local:runs/nothing"}, "not_found", "does not exist"),
    ({"run": "/etc"}, "path_forbidden", "outside the server's local root"),
    ({"run": "org/name@main"}, "bad_id", "a run is a whole repo"),
    ({"run": "local:runs/api/run", "tolerance": -1}, "bad_request", "tolerance"),
])
def test_bad_runs_are_refused_with_nothing_recorded_or_queued(svc, run_dirs, request_body, code, words):
    many = svc.local_root / "runs" / "many"
    for step in range(66):  # refused by count before any checkpoint is opened
        (many / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
    mixed = svc.local_root / "runs" / "mixed"
    if not (mixed / "base").exists():
        state = base_state()
        save(mixed / "base", state)
        save(mixed / "run" / "checkpoint-1", state)
        wide = {**state, "model.layers.1.mlp.up_proj.weight": torch.zeros(64, 32, dtype=torch.bfloat16)}
        save(mixed / "run" / "checkpoint-2", wide)
        save(mixed / "run" / "checkpoint-3", state)
    wait_idle(svc)
    # and no earlier test's run still on its way to its reduce (its pending mark goes when it ends)
    wait_for(lambda: svc.redis.scard(PENDING_TRAINING_RUNS) == 0, 120, "earlier runs to finish", interval=0.1)
    before, queued = _keys(svc), svc.redis.llen("rq:queue:subnetscope")
    r = svc.client.post("/api/runs", json=request_body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["code"] == code and words in detail["message"], detail
    assert _keys(svc) == before and svc.redis.llen("rq:queue:subnetscope") == queued


def test_unknown_run_is_404(svc):
    assert svc.client.get("/api/runs/0123456789abcdef").json()["detail"]["code"] == "unknown_run"
    assert svc.client.get("/api/runs/nope").status_code == 404


def _big_run(root, steps=(1, 2, 3)):
    """A run whose analyses take long enough to be interrupted (many tensors)."""
    gen = torch.Generator().manual_seed(5)
    base = {f"model.layers.{i // 4}.self_attn.{('q', 'k', 'v', 'o')[i % 4]}_proj.weight":
            (torch.randn(128, 256, generator=gen) * 0.02).to(torch.bfloat16) for i in range(192)}
    save(root / "base", base)
    state = base
    for step in steps:
        state = train_step(state, gen, move=0.2, revert=0.1, base=base)
        save(root / "run" / f"checkpoint-{step}", state)


def test_killed_worker_resumes_the_run_and_a_lost_reduce_runs_again(svc):
    _big_run(svc.local_root / "runs" / "big")
    wait_idle(svc)
    r = svc.client.post("/api/runs", json={"base": "local:runs/big/base", "run": "local:runs/big/run",
                                           "tolerance": 2e-5})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = svc.client.get(f"/api/runs/{rid}").json()
        running = [c for c in body["checkpoints"] if c["analysis"]["status"] == "running"
                   and (c["analysis"]["progress"] or {}).get("tensors_done", 0) >= 3]
        if running:
            break
        assert body["status"] != "done", "finished before it could be interrupted"
        time.sleep(0.02)
    svc.kill_worker()
    time.sleep(7)  # the run key expires (ALIVE_TTL_S)
    assert svc.client.get(f"/api/runs/{rid}").json()["status"] == "stalled"
    svc.start_worker()
    body = wait_run(svc.client, rid)
    assert body["status"] == "done", body["error"]
    runs = [c["analysis"] for c in body["checkpoints"]]
    assert all(a["status"] == "done" for a in runs)
    first = body["result"]

    # the reducer dies mid-way (its claim is there, its liveness key gone): the janitor runs it again
    key = f"subnetscope:training_run:{rid}"
    svc.redis.hset(key, mapping={"status": "reducing", "reduce_started_at": repr(time.time())})
    svc.redis.hdel(key, "result")
    svc.redis.sadd("subnetscope:training_runs:pending", rid)
    again = wait_run(svc.client, rid, timeout=60)
    assert again["status"] == "done" and again["result"]["checkpoints"] == first["checkpoints"]
