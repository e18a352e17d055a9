"""The "Download patch" job: queued once per analysis, progress, the artifact, and a bit-exact apply."""

from __future__ import annotations

import time

import pytest
from service_helpers import done

from worker.engine import open_source, parse_source
from worker.engine.patch.apply import apply_patch

pytestmark = pytest.mark.timeout(300)


def test_export_download_and_apply(svc, tmp_path):
    finished = done(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=1e-5)
    aid = finished["id"]
    assert svc.client.get(f"/api/analyses/{aid}/patch").status_code == 404
    first = svc.client.post(f"/api/analyses/{aid}/patch")
    again = svc.client.post(f"/api/analyses/{aid}/patch")
    assert first.status_code in (200, 202) and again.status_code in (200, 202)
    deadline = time.monotonic() + 120
    while True:
        body = svc.client.get(f"/api/analyses/{aid}/patch").json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body["status"] == "done", body
    assert body["progress"] == 1.0
    estimate = finished["result"]["patch"]
    assert abs(body["bytes"] - estimate["bytes"]) <= 0.1 * body["bytes"]
    r = svc.client.get(body["download_url"])
    assert r.status_code == 200 and len(r.content) == body["bytes"]
    patch = tmp_path / "p.patch"
    patch.write_bytes(r.content)
    base_dir = svc.local_root / "demo" / "base"
    with open_source(parse_source(str(base_dir), allow_any_path=True)) as base:
        apply_patch(base, patch, tmp_path / "out")
    tuned_dir = svc.local_root / "demo" / "rl_a"
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tuned_dir / "model.safetensors").read_bytes()
    # Requested twice, exported once: a third request answers done at once.
    assert svc.client.post(f"/api/analyses/{aid}/patch").status_code == 200


def test_an_unfinished_or_unknown_analysis_is_refused(svc):
    assert svc.client.post("/api/analyses/0123456789abcdef/patch").status_code in (404, 422)
