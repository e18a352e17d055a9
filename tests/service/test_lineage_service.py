"""POST /api/lineage: a worker ranks the candidates; the demo's parent comes first."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(300)


def _wait(svc, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        body = svc.client.get(f"/api/lineage/{job_id}").json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_lineage_ranks_the_parent_first(svc):
    request = {"tuned": svc.demo("rl_a"), "candidates": [svc.demo("sft"), svc.demo("rl_b"), svc.demo("base")]}
    r = svc.client.post("/api/lineage", json=request)
    assert r.status_code in (200, 202), r.text
    job = r.json()
    assert job["url"] == f"/l/{job['id']}"
    assert svc.client.post("/api/lineage", json=request).json()["id"] == job["id"]  # asked once
    body = _wait(svc, job["id"])
    assert body["status"] == "done", body
    rows = body["result"]["candidates"]
    assert [row["label"] for row in rows][0] == svc.demo("base")
    assert body["result"]["separated"] is True
    assert all(row["read_share"] <= 0.02 for row in rows)
    assert str(svc.local_root) not in r.text + str(body["result"]["target"].get("label"))


def test_a_path_outside_the_root_fails_clearly(svc):
    r = svc.client.post("/api/lineage", json={"tuned": "/etc", "candidates": [svc.demo("base")]})
    body = _wait(svc, r.json()["id"])
    assert body["status"] == "failed" and body["error"]["code"] in ("path_forbidden", "bad_id")
