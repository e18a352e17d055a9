"""Fan-out on the real service: one analysis split into tensor groups over several RQ workers
gives the single-worker result byte for byte, and a worker killed mid-group costs that group
one more run (resumed from its finished tensors) and no other group anything.

`fanout_svc` is a second service (tests/support/service.py start_service: real redis-server, web app,
`subnetscope worker` processes) with SUBNETSCOPE_FANOUT_BYTES low enough that these pairs fan
out; the session's `svc` keeps the default (4 GiB), so the same pair there is one job.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from service_helpers import comparable, submit, write_many_tensor_pair
from support.polling import wait_status
from support.service import cli, start_service

pytestmark = pytest.mark.timeout(600)

GROUP_BYTES = 3_000_000


@pytest.fixture(scope="module")
def fanout_svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("fanout")
    service = start_service(root, SUBNETSCOPE_FANOUT_BYTES="8MB", SUBNETSCOPE_FANOUT_GROUP_BYTES=str(GROUP_BYTES))
    yield service
    service.close()


def start_extra_worker(svc, name: str) -> subprocess.Popen:
    log = open(svc.logs_dir / f"{name}.log", "ab")
    try:
        proc = subprocess.Popen(cli("worker", "--name", name), env=svc.env, cwd=svc.root,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()
    svc._wait(lambda: svc.redis.exists(f"subnetscope:worker:{name}"), 60, f"worker {name}", proc, f"{name}.log")
    return proc


def fanout_of(svc, aid: str) -> dict:
    return json.loads(svc.redis.hget(f"subnetscope:analysis:{aid}", "fanout") or "null")


def masks_bytes(svc, aid: str) -> bytes:
    r = svc.client.get(f"/api/analyses/{aid}/masks")
    assert r.status_code == 200, r.text
    return r.content


def test_fanned_out_over_two_workers_equals_one_worker_byte_for_byte(svc, fanout_svc):
    from app.cli.embedded import stop_worker

    pair = dict(tensors=96, rows=128, cols=256, seed=21)  # 12.6 MB compared: 4-5 groups of ~3 MB
    write_many_tensor_pair(svc.local_root / "fan" / "same", **pair)
    write_many_tensor_pair(fanout_svc.local_root / "fan" / "same", **pair)
    options = dict(tolerance=1e-5, rank="sampled")

    extra = start_extra_worker(fanout_svc, "fanout-extra-1")
    try:
        r = submit(fanout_svc.client, "local:fan/same/base", "local:fan/same/tuned", **options)
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        seen_groups = set()
        deadline = time.monotonic() + 240
        while True:  # progress is summed over the groups while they run
            body = fanout_svc.client.get(f"/api/analyses/{aid}").json()
            groups = (body.get("progress") or {}).get("groups")
            if groups:
                seen_groups.add(groups["total"])
                assert 0 <= body["progress"]["bytes_done"] <= body["progress"]["bytes_total"]
            if body["status"] in ("done", "failed"):
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        assert body["status"] == "done", body["error"]
    finally:
        stop_worker(extra)
    fan = fanout_of(fanout_svc, aid)
    assert fan["groups"] >= 4 and seen_groups == {fan["groups"]}, (fan, seen_groups)
    assert fan["runs"] == [1] * fan["groups"]
    assert len(set(fan["workers"])) == 2, fan["workers"]  # both workers took groups
    assert body["progress"]["groups"]["done"] == fan["groups"]

    single = submit(svc.client, "local:fan/same/base", "local:fan/same/tuned", **options)
    assert single.status_code in (200, 202), single.text
    assert single.json()["id"] == aid  # same content, same options: the same permalink
    one = wait_status(svc.client, aid, timeout=240)
    assert one["status"] == "done", one["error"]
    assert fanout_of(svc, aid) is None  # below the default threshold: one job

    assert comparable(body["result"]) == comparable(one["result"])
    assert body["result"]["summary"]["bytes_read"] == one["result"]["summary"]["bytes_read"]
    assert body["result"]["summary"]["rank"]["matrices"] > 0
    assert masks_bytes(fanout_svc, aid) == masks_bytes(svc, aid)


def test_worker_killed_mid_group_resumes_that_group_only(fanout_svc, tmp_path):
    svc = fanout_svc
    base, tuned = write_many_tensor_pair(svc.local_root / "fan" / "kill", tensors=128, rows=256, cols=256, seed=5)
    r = submit(svc.client, "local:fan/kill/base", "local:fan/kill/tuned", tolerance=1e-4, rank="all")
    assert r.status_code == 202, r.text
    aid = r.json()["id"]

    def group_states():
        """Per group: status, runs, and how many of its tensors have a finished record now."""
        groups = json.loads(svc.redis.get(f"subnetscope:analysis:{aid}:groups") or "[]")
        finished = {json.loads(x)["name"] for x in svc.redis.lrange(f"subnetscope:analysis:{aid}:tensors", 0, -1)}
        out = []
        for k, group in enumerate(groups):
            status, runs = svc.redis.hmget(f"subnetscope:analysis:{aid}:group:{k}", "status", "runs")
            out.append({"status": (status or b"").decode(), "runs": int(runs or 0), "size": len(group["names"]),
                        "finished": len(finished & set(group["names"]))})
        return out

    # Kill the worker once a group is done and the next one has finished some tensors but not all.
    deadline = time.monotonic() + 240
    while True:
        states = group_states()
        done = [k for k, s in enumerate(states) if s["status"] == "done"]
        running = [k for k, s in enumerate(states) if s["status"] == "running" and 2 <= s["finished"] < s["size"] - 2]
        if done and running:
            break
        status = svc.client.get(f"/api/analyses/{aid}").json()["status"]
        assert status in ("queued", "running"), f"{status} before the kill"
        assert time.monotonic() < deadline, states
        time.sleep(0.005)
    svc.kill_worker()
    killed = running[0]
    states = group_states()
    finished_in_killed = states[killed]["finished"]
    assert states[killed]["status"] == "running" and finished_in_killed < states[killed]["size"], states
    assert 0 < len(done) < len(states) - 1

    stalled = wait_status(svc.client, aid, ("stalled",), timeout=60)  # no worker, no janitor: stalled
    assert stalled["partial"] and stalled["result"] is None
    svc.start_worker()
    final = wait_status(svc.client, aid, timeout=300)
    assert final["status"] == "done", final["error"]

    fan = fanout_of(svc, aid)
    assert fan["runs"][killed] == 2, fan["runs"]
    assert [n for k, n in enumerate(fan["runs"]) if k != killed] == [1] * (fan["groups"] - 1), fan["runs"]
    resumed = [line for line in svc.log_text(f"{svc.worker_names[-1]}.log").splitlines()
               if f"analysis {aid}: group {killed}/" in line and "run started" in line]
    assert resumed, "the new worker never ran the killed group"
    assert int(resumed[0].split("(")[1].split()[0]) >= finished_in_killed, resumed

    # The merged result is the single-worker one (the CLI's), masks byte for byte.
    out = tmp_path / "cli"
    from service_helpers import VENV_BIN

    proc = subprocess.run([str(VENV_BIN / "subnetscope"), "analyze", str(base), str(tuned), "--json",
                           str(out / "r.json"), "--masks", str(out / "masks"), "--quiet", "--device", "cpu",
                           "--tolerance", "1e-4", "--rank", "all"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    expected = json.loads((out / "r.json").read_text())
    assert comparable(final["result"]) == comparable(expected)
    assert masks_bytes(svc, aid) == (out / "masks" / "masks.safetensors").read_bytes()
