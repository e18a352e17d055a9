"""Transient Hub errors while running: the job is retried by RQ and the analysis still finishes."""

from __future__ import annotations

import time

import pytest
from checkpoint_utils import write_pair
from service_helpers import assert_same_numbers, cli_result, comparable, submit
from support.service import start_service

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


@pytest.fixture(scope="module")
def hub_svc(tmp_path_factory):
    from hubserver import HubServer

    root = tmp_path_factory.mktemp("hubsvc")
    repos = root / "repos"
    write_pair(repos / "org" / "base", repos / "org" / "tuned")
    with HubServer(repos) as hub:
        svc = start_service(root / "svc", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        try:
            yield hub, svc, repos
        finally:
            svc.close()


def test_hub_outage_during_the_run_is_retried_and_finishes(hub_svc, tmp_path):
    hub, svc, repos = hub_svc
    svc.stop_worker()  # so the outage starts before the worker's first request
    r = submit(svc.client, "org/base", "org/tuned", tolerance=1e-5)
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    # More failures than the engine's own attempts for one request: the run must give up once.
    hub.fail_next(6, status=503)
    svc.start_worker()

    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = svc.client.get(f"/api/analyses/{aid}").json()
        seen.append((body["status"], (body.get("error") or {}).get("code")))
        if body["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert body["status"] == "done", body["error"]
    assert ("queued", "transient") in seen, "the transient failure was never reported while waiting to retry"
    assert body["runs"] == 2 and body["error"] is None

    expected = cli_result(repos / "org" / "base", repos / "org" / "tuned", tmp_path, tolerance=1e-5)
    got, want = comparable(body["result"]), comparable(expected)
    for side in ("base", "tuned"):  # a Hub commit vs a local directory: only the naming differs
        got.pop(side), want.pop(side)
    assert_same_numbers(got, want)
    assert body["result"]["tuned"]["sha"] == hub.commit_sha("org/tuned")
