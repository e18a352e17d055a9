"""A worker killed mid-analysis: the analysis shows stalled, then resumes on a new worker."""

from __future__ import annotations

import time

import pytest
from service_helpers import assert_same_numbers, cli_result, comparable, submit, write_many_tensor_pair
from support.polling import wait_idle, wait_status

pytestmark = pytest.mark.timeout(400)


def test_killed_worker_stalls_then_resumes_from_finished_tensors(svc, tmp_path):
    from worker.engine.masks import load_masks

    base, tuned = write_many_tensor_pair(svc.local_root / "svc" / "resume", seed=11)
    wait_idle(svc)
    r = submit(svc.client, "local:svc/resume/base", "local:svc/resume/tuned", tolerance=1e-4)
    assert r.status_code == 202, r.text
    aid = r.json()["id"]

    # Kill the worker (and its work horse) as soon as some tensors are finished.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = svc.client.get(f"/api/analyses/{aid}").json()
        if body["status"] == "running" and len(body.get("partial") or []) >= 3:
            break
        assert body["status"] != "done", "finished before it could be interrupted"
        time.sleep(0.01)
    svc.kill_worker()
    killed_at = svc.client.get(f"/api/analyses/{aid}").json()
    finished_before = len(killed_at["partial"])
    total = killed_at["progress"]["tensors_total"]
    assert 0 < finished_before < total

    stalled = wait_status(svc.client, aid, ("stalled",), timeout=60)
    assert stalled["stalled_reason"] and stalled["partial"], stalled
    deadline = time.monotonic() + 30
    while svc.client.get("/api/health").json()["workers"] != 0:  # its presence key expires
        assert time.monotonic() < deadline, "a SIGKILLed worker is still counted"
        time.sleep(0.2)

    svc.start_worker()
    final = wait_status(svc.client, aid, timeout=240)
    assert final["status"] == "done", final["error"]
    assert final["runs"] == 2
    resumed = [line for line in svc.log_text(f"{svc.worker_names[-1]}.log").splitlines()
               if f"analysis {aid}: run started" in line]
    assert resumed, "the new worker never started the analysis"
    n_resumed = int(resumed[0].split("(")[1].split()[0])
    assert n_resumed >= finished_before, resumed

    # The stitched result is the same as one uninterrupted run, masks included.
    expected = cli_result(base, tuned, tmp_path, tolerance=1e-4)
    assert_same_numbers(comparable(final["result"]), comparable(expected))
    path = tmp_path / "masks.safetensors"
    path.write_bytes(svc.client.get(f"/api/analyses/{aid}/masks").content)
    masks = load_masks(path)
    for rec in final["result"]["tensors"]:
        assert int(masks[rec["name"]].sum()) == rec["changed"][repr(1e-4)], rec["name"]
