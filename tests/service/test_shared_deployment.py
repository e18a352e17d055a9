"""A deployment shared by many users: an API token for submissions, a per-client rate limit, a size cap.

One service for the module, configured as an operator of a shared instance would:
SUBNETSCOPE_API_TOKEN, SUBNETSCOPE_SUBMIT_RATE / _WINDOW_S and SUBNETSCOPE_MAX_BYTES, with a
loopback Hub (tests/hubserver.py) for pairs on the Hub. Each test speaks as its own client
(X-Forwarded-For from loopback, which uvicorn trusts), so their submissions are counted apart.
"""

from __future__ import annotations

import json
import struct
import time

import httpx
import psutil
import pytest
import torch
from safetensors.torch import save_file
from support.polling import wait_status
from support.service import start_service

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

API_TOKEN = "shared-deployment-token-1b7e"
RATE, WINDOW_S = 4, 60
MAX_BYTES = 4_000_000  # the demo pair (~3.7 MB) fits, the "big" pairs below do not
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}


def write_checkpoint(directory, dim: int, seed: int, nudge: bool = False) -> None:
    gen = torch.Generator().manual_seed(seed)
    state = {f"model.layers.{i}.self_attn.{m}.weight": torch.randn(dim, dim, generator=gen).to(torch.bfloat16)
             for i in range(2) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    if nudge:
        state = {k: (v.float() + 0.01).to(torch.bfloat16) for k, v in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(CONFIG))


def write_sparse_checkpoint(directory, nbytes: int) -> None:
    """A valid safetensors file declaring one bf16 tensor of `nbytes`, its data a hole (no disk used):
    hashing it for a content id would read all of it."""
    directory.mkdir(parents=True, exist_ok=True)
    cols = 4096
    rows = nbytes // (2 * cols)
    header = json.dumps({"model.layers.0.mlp.up_proj.weight": {
        "dtype": "BF16", "shape": [rows, cols], "data_offsets": [0, rows * cols * 2]}}).encode()
    header += b" " * (-len(header) % 8)
    path = directory / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + rows * cols * 2)
    (directory / "config.json").write_text(json.dumps(CONFIG))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    from hubserver import HubServer

    root = tmp_path_factory.mktemp("shared")
    repos = root / "repos"
    write_checkpoint(repos / "org" / "base", 64, 1)
    write_checkpoint(repos / "org" / "tuned", 64, 1, nudge=True)
    write_checkpoint(repos / "org" / "big-base", 512, 2)  # 4.2 MB each
    write_checkpoint(repos / "org" / "big-tuned", 512, 2, nudge=True)
    with HubServer(repos) as hub:
        svc = start_service(
            root / "svc", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", SUBNETSCOPE_API_TOKEN=API_TOKEN,
            SUBNETSCOPE_SUBMIT_RATE=str(RATE), SUBNETSCOPE_SUBMIT_RATE_WINDOW_S=str(WINDOW_S),
            SUBNETSCOPE_MAX_BYTES=str(MAX_BYTES))
        try:
            write_sparse_checkpoint(svc.local_root / "huge" / "base", 10 << 30)
            write_sparse_checkpoint(svc.local_root / "huge" / "tuned", 10 << 30)
            yield hub, svc
        finally:
            svc.close()


def client(svc, address: str, token: str | None = API_TOKEN) -> httpx.Client:
    headers = {"X-Forwarded-For": address}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=svc.base_url, headers=headers, timeout=60)


def demo_pair(svc, tolerance: float) -> dict:
    return {"base": svc.demo("base"), "tuned": svc.demo("rl_a"), "tolerance": tolerance}


def test_submissions_need_the_api_token_and_reads_stay_open(shared):
    _, svc = shared
    before = svc.redis.zcard("subnetscope:analyses")
    with client(svc, "10.1.0.1", token=None) as anonymous, client(svc, "10.1.0.1", token="wrong") as wrong:
        for c, says in ((anonymous, "Authorization: Bearer"), (wrong, "not this deployment's")):
            r = c.post("/api/analyses", json=demo_pair(svc, 1.01e-5))
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
            detail = r.json()["detail"]
            assert detail["code"] == "unauthorized" and says in detail["message"], detail
            assert API_TOKEN not in r.text
        assert svc.redis.zcard("subnetscope:analyses") == before, "a refused submission left a record"

    with client(svc, "10.1.0.2") as member:
        r = member.post("/api/analyses", json=demo_pair(svc, 1.01e-5))
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
    body = wait_status(svc.client, aid)
    assert body["status"] == "done"

    # Reads need nothing: permalinks work for anyone.
    with client(svc, "10.1.0.1", token=None) as anonymous:
        for path in (f"/api/analyses/{aid}", f"/api/analyses/{aid}/tensors", "/api/analyses", "/api/health",
                     f"/a/{aid}", f"/api/analyses/{aid}/masks"):
            assert anonymous.get(path).status_code == 200, path
        # Every other POST under /api is a submission too.
        assert anonymous.post(f"/api/analyses/{aid}/retry").status_code == 401
        assert anonymous.post("/api/overlaps", json={"analyses": [aid, aid[::-1]]}).status_code == 401


def test_submissions_are_rate_limited_per_client(shared):
    _, svc = shared
    with client(svc, "10.2.0.1") as a, client(svc, "10.2.0.2") as b:
        statuses = [a.post("/api/analyses", json=demo_pair(svc, 1.02e-5)).status_code for _ in range(RATE)]
        assert 429 not in statuses and set(statuses) <= {200, 202}, statuses
        r = a.post("/api/analyses", json=demo_pair(svc, 1.02e-5))
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= WINDOW_S
        detail = r.json()["detail"]
        assert detail["code"] == "rate_limited" and "Try again in" in detail["message"]
        # Other POSTs count against the same allowance; reads never do; another client is not affected.
        assert a.post("/api/overlaps", json={"analyses": ["0" * 16, "1" * 16]}).status_code == 429
        assert a.get("/api/analyses").status_code == 200
        assert b.post("/api/analyses", json=demo_pair(svc, 1.02e-5)).status_code in (200, 202)


def _web_chars_read(svc) -> int:
    procs = [psutil.Process(svc.web.pid), *psutil.Process(svc.web.pid).children(recursive=True)]
    return sum(p.io_counters().read_chars for p in procs)


def test_max_bytes_refuses_a_local_pair_before_reading_its_weights(shared):
    _, svc = shared
    with client(svc, "10.3.0.1") as c:
        assert c.post("/api/analyses", json=demo_pair(svc, 1.03e-5)).status_code in (200, 202)  # under the cap
        read_before, started = _web_chars_read(svc), time.monotonic()
        r = c.post("/api/analyses", json={"base": "local:huge/base", "tuned": "local:huge/tuned"})
        elapsed, read = time.monotonic() - started, _web_chars_read(svc) - read_before
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["code"] == "too_large", detail
    assert "21.5 GB" in detail["message"] and "4 MB" in detail["message"], detail["message"]
    # 20 GiB declared: computing its content id would read all of it; only the headers were read.
    assert read < 64 << 20, f"{read} bytes read by the web processes"
    assert elapsed < 30
    assert not [i for i in svc.client.get("/api/analyses", params={"limit": 1000}).json()["items"]
                if i["tuned"] == "local:huge/tuned"]


def test_max_bytes_refuses_a_hub_pair_from_its_headers(shared):
    hub, svc = shared
    hub.clear_log()
    with client(svc, "10.4.0.1") as c:
        r = c.post("/api/analyses", json={"base": "org/big-base", "tuned": "org/big-tuned"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["code"] == "too_large"
        # A pair under the cap from the same Hub goes through.
        ok = c.post("/api/analyses", json={"base": "org/base", "tuned": "org/tuned", "tolerance": 1.04e-5})
        assert ok.status_code == 202, ok.text
    # Only the big pair's headers left the Hub (8 bytes, then the header: ~1 KB), not its 8 MB of weights.
    big = [s for s in hub.served(suffix=".safetensors") if "big-" in s.path or "big-" in s.query]
    assert big, "the big pair's headers were never read"
    assert sum(s.body_bytes for s in big) < 64 << 10, [(s.path, s.range, s.body_bytes) for s in big]
    assert wait_status(svc.client, ok.json()["id"])["status"] == "done"
