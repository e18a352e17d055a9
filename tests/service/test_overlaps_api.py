"""POST /api/overlaps and GET /api/overlaps/{id}, checked against the downloaded masks."""

from __future__ import annotations

import pytest
from service_helpers import done
from support.polling import wait_for_status

pytestmark = pytest.mark.timeout(300)


def wait_overlap(client, oid: str, timeout: float = 120) -> dict:
    return wait_for_status(client, f"/api/overlaps/{oid}", timeout=timeout)


def test_overlap_of_two_rl_runs_matches_their_masks(svc, tmp_path):
    from worker.engine.masks import load_masks

    a = done(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=3e-6)
    b = done(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=3e-6)
    r = svc.client.post("/api/overlaps", json={"analyses": [a["id"], b["id"]]})
    assert r.status_code == 202, r.text
    oid = r.json()["id"]
    again = svc.client.post("/api/overlaps", json={"analyses": [a["id"], b["id"]]}).json()["id"]
    assert again == oid
    body = wait_overlap(svc.client, oid)
    assert body["status"] == "done", body["error"]
    assert body["analyses"] == [a["id"], b["id"]]
    res = body["result"]

    masks = []
    for analysis in (a, b):
        path = tmp_path / f"{analysis['id']}.safetensors"
        path.write_bytes(svc.client.get(f"/api/analyses/{analysis['id']}/masks").content)
        masks.append(load_masks(path))
    common = set(masks[0]) & set(masks[1])
    both = sum(int((masks[0][n] & masks[1][n]).sum()) for n in common)
    a_changed = sum(int(masks[0][n].sum()) for n in common)
    b_changed = sum(int(masks[1][n].sum()) for n in common)
    assert (res["both"], res["a_changed"], res["b_changed"]) == (both, a_changed, b_changed)
    assert res["o1"] == pytest.approx(both / a_changed)
    assert res["o2"] == pytest.approx(both / b_changed)
    assert res["labels"] == ["rl_a", "rl_b"]


def test_overlap_refusals(svc):
    a = done(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=3e-6)
    other_tol = done(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=5e-6)
    other_base = done(svc.client, svc.demo("sft"), svc.demo("rl_b"), tolerance=3e-6)
    cases = [
        ([a["id"]], 422),
        ([a["id"], a["id"]], 422),
        ([a["id"], "0123456789abcdef"], 404),
        ([a["id"], other_tol["id"]], 422),
        ([a["id"], other_base["id"]], 422),
    ]
    for ids, status in cases:
        r = svc.client.post("/api/overlaps", json={"analyses": ids})
        assert r.status_code == status, (ids, r.text)
        assert r.json()["detail"]["message"], r.text
