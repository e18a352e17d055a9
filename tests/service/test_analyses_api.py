"""Submit, follow and read analyses through real HTTP, a real worker and a real Redis."""

from __future__ import annotations

import json
import time

import pytest
from service_helpers import assert_same_numbers, cli_result, comparable, done, submit, write_many_tensor_pair
from support.polling import wait_status

pytestmark = pytest.mark.timeout(300)


def test_demo_analysis_equals_the_cli_result(svc, tmp_path):
    r = submit(svc.client, svc.demo("base"), svc.demo("sft"), tolerance=1e-5)
    assert r.status_code == 202, r.text
    sub = r.json()
    assert sub["status"] == "queued" and sub["url"] == f"/a/{sub['id']}"
    body = wait_status(svc.client, sub["id"])
    assert body["status"] == "done", body["error"]
    assert body["error"] is None
    assert body["progress"]["tensors_done"] == body["progress"]["tensors_total"] > 0
    assert body["request"]["base"] == svc.demo("base") and body["request"]["tolerance"] == 1e-5
    assert "partial" not in body
    # Kept in the product's own key with no expiry, not in RQ's short-lived job result.
    assert svc.redis.ttl(f"subnetscope:analysis:{sub['id']}") == -1

    # Strict JSON, as a browser parses it: no NaN or Infinity tokens.
    raw = svc.client.get(f"/api/analyses/{sub['id']}").text
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the body"))
    tensors = svc.client.get(f"/api/analyses/{sub['id']}/tensors")
    assert tensors.status_code == 200
    json.loads(tensors.text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in /tensors"))

    demo = svc.local_root / "demo"
    expected = cli_result(demo / "base", demo / "sft", tmp_path, tolerance=1e-5)
    assert_same_numbers(comparable(body["result"]), comparable(expected))
    assert body["result"]["base"]["id"] == svc.demo("base")  # the name the user gave, never a server path


def test_progress_and_partial_results_while_running(svc, tmp_path):
    base, tuned = write_many_tensor_pair(svc.local_root / "svc" / "progress")
    r = submit(svc.client, "local:svc/progress/base", "local:svc/progress/tuned")
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    seen_running = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        body = svc.client.get(f"/api/analyses/{aid}").json()
        if body["status"] == "running":
            seen_running.append(body)
        if body["status"] in ("done", "failed"):
            break
        time.sleep(0.02)
    assert body["status"] == "done", body["error"]
    mid = [b for b in seen_running if 0 < b["progress"]["tensors_done"] < b["progress"]["tensors_total"]]
    assert mid, "never saw a running analysis part-way through"
    sample = mid[len(mid) // 2]
    p = sample["progress"]
    assert 0 < p["bytes_done"] < p["bytes_total"]
    assert p["bytes_total"] == body["progress"]["bytes_total"]
    assert any(b["progress"]["bytes_per_s"] for b in mid), "no transfer rate reported while running"
    # Partial records are finished tensors, in the result's order, with the result's numbers.
    partial = sample["partial"]
    assert 0 < len(partial) <= p["tensors_total"]
    final = {t["name"]: t for t in body["result"]["tensors"]}
    for rec in partial:
        assert rec == final[rec["name"]]


def test_validation_problems_are_422_with_a_code_and_leave_no_record(svc):
    before = svc.client.get("/api/analyses", params={"limit": 1000}).json()["total"]
    cases = [
        ({"base": "not a repo id!!", "tuned": svc.demo("base")}, "bad_id"),
        ({"base": "org/name", "tuned": "org/other", "base_revision": "../../etc"}, "bad_revision"),
        ({"base": svc.demo("base"), "tuned": svc.demo("sft"), "tuned_revision": "main"}, "bad_revision"),
        ({"base": "local:../x", "tuned": svc.demo("sft")}, "path_forbidden"),
        ({"base": svc.demo("base"), "tuned": "local:demo/nope"}, "not_found"),
        ({"base": svc.demo("base"), "tuned": svc.demo("sft"), "tolerance": -1}, "bad_request"),
        ({"base": svc.demo("base"), "tuned": svc.demo("sft"), "rank": "most"}, "bad_request"),
        ({"base": svc.demo("base")}, "bad_request"),
        ({"tuned": svc.demo("sft")}, "bad_request"),  # no base, and not a LoRA adapter that names one
        ({"base": svc.demo("base"), "tuned": svc.demo("sft"), "colour": "red"}, "bad_request"),
    ]
    for body, code in cases:
        r = svc.client.post("/api/analyses", json=body)
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"]
        assert detail["code"] == code, (body, detail)
        assert len(detail["message"]) > 15, detail
    r = svc.client.post("/api/analyses", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "bad_request"
    after = svc.client.get("/api/analyses", params={"limit": 1000}).json()["total"]
    assert after == before


def test_unknown_ids_are_404(svc):
    for path in ("/api/analyses/0123456789abcdef", "/api/analyses/zz/tensors",
                 "/api/analyses/0123456789abcdef/masks", "/api/overlaps/0123456789abcdef"):
        r = svc.client.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text)


def test_recent_analyses_are_paged_newest_first(svc):
    a = done(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=2e-6)
    b = done(svc.client, svc.demo("base"), svc.demo("resized"), tolerance=2e-6)
    page = svc.client.get("/api/analyses", params={"limit": 2}).json()
    assert [i["id"] for i in page["items"]] == [b["id"], a["id"]]
    assert page["total"] >= 2 and page["limit"] == 2 and page["offset"] == 0
    item = page["items"][0]
    assert item["status"] == "done" and item["tuned"] == svc.demo("resized") and item["url"] == f"/a/{b['id']}"
    assert item["summary"]["sparsity"] == b["result"]["summary"]["sparsity"][repr(2e-6)]
    second = svc.client.get("/api/analyses", params={"limit": 1, "offset": 1}).json()
    assert [i["id"] for i in second["items"]] == [a["id"]]
    assert svc.client.get("/api/analyses", params={"limit": 0}).status_code == 422


def test_health_and_openapi(svc):
    health = svc.client.get("/api/health").json()
    assert health["redis"] == "ok" and health["workers"] >= 1
    spec = svc.client.get("/openapi.json").json()
    for path in ("/api/analyses", "/api/analyses/{analysis_id}", "/api/analyses/{analysis_id}/tensors",
                 "/api/analyses/{analysis_id}/masks", "/api/analyses/{analysis_id}/retry", "/api/overlaps",
                 "/api/overlaps/{overlap_id}", "/api/health"):
        assert path in spec["paths"], path
    docs = svc.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_lora_adapter_without_base_takes_the_base_its_config_names(svc, tmp_path):
    """A PEFT LoRA adapter under the local root, base left empty: the worker merges it onto the base
    its adapter_config.json names, and the numbers equal the CLI's on the same pair."""
    import torch
    from safetensors.torch import save_file

    base_dir = svc.local_root / "demo" / "base"
    adapter = svc.local_root / "demo_lora"
    adapter.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    state = {}
    for i in range(4):
        for m in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{i}.self_attn.{m}"
            state[f"{key}.lora_A.weight"] = torch.randn(4, 128, generator=gen) * 0.1
            state[f"{key}.lora_B.weight"] = torch.randn(128, 4, generator=gen) * 0.01
    save_file(state, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "base_model_name_or_path": str(base_dir)}))
    r = svc.client.post("/api/analyses", json={"tuned": "local:demo_lora"})
    assert r.status_code == 202, r.text
    body = wait_status(svc.client, r.json()["id"])
    assert body["status"] == "done", body["error"]
    result = body["result"]
    assert result["base"]["id"] == "local:demo/base"  # as a user would type it, not a server path
    assert result["tuned"]["adapter"]["label"] == "LoRA r=4, alpha=8"
    assert body["request"]["base"] == "local:demo/base" and body["request"]["base_from_adapter"] is True
    assert_same_numbers(comparable(result), comparable(cli_result(base_dir, adapter, tmp_path)))
    # the same pair named explicitly is the same analysis
    again = svc.client.post("/api/analyses", json={"base": svc.demo("base"), "tuned": "local:demo_lora"})
    assert again.json()["id"] == body["id"]
