"""POST /api/runs on a Hub repo whose step branches and tags are the checkpoints.

The Hub is the loopback server (tests/hubserver.py) in this process; the web app and the
worker are separate processes that reach it through HF_ENDPOINT, as they would huggingface.co.
"""

from __future__ import annotations

import pytest
from hubserver import HubServer
from run_checkpoints import reference, save, write_run
from support.service import start_service
from test_runs_api import wait_run

pytestmark = pytest.mark.timeout(600)

T = 1e-5


@pytest.fixture(scope="module")
def hub_svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-hub")
    _, _, states = write_run(root / "local")
    repos = root / "repos"
    save(repos / "org" / "run", states["base"])
    for step in (100, 200, 300):
        save(repos / "org" / f"run@step-{step}", states[step], trainer_files=True)
    with HubServer(repos) as hub:
        hub.tags["org/run"] = {"step-300"}
        svc = start_service(root / "svc", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        try:
            yield hub, svc, states
        finally:
            svc.close()


def test_hub_run_of_step_branches_pinned_to_commits(hub_svc):
    hub, svc, states = hub_svc
    r = svc.client.post("/api/runs", json={"base": "org/run", "run": "org/run", "revisions": "step-*",
                                           "tolerance": T})
    assert r.status_code == 202, r.text
    body = wait_run(svc.client, r.json()["id"])
    assert body["status"] == "done", body["error"]
    cps = body["checkpoints"]
    assert [c["name"] for c in cps] == ["step-100", "step-200", "step-300"]
    assert [c["ref"] for c in cps] == ["refs/heads/step-100", "refs/heads/step-200", "refs/tags/step-300"]
    assert [c["sha"] for c in cps] == [hub.commit_sha("org/run", f"step-{s}") for s in (100, 200, 300)]
    ref = reference([states["base"], states[100], states[200], states[300]], T)
    got = body["result"]["checkpoints"]
    assert [c["ever_outside"] for c in got] == [c["ever_outside"] for c in ref["checkpoints"]]
    assert [c["final_both"] for c in got] == [c["final_both"] for c in ref["checkpoints"]]
    # the analyses are the ones POST /api/analyses gives for the same revisions
    a = svc.client.post("/api/analyses", json={"base": "org/run", "tuned": "org/run@step-200", "tolerance": T})
    assert a.status_code == 200 and a.json()["id"] == cps[1]["analysis"]["id"]
    assert not [x for x in hub.requests if x.file and x.file.endswith((".pt", ".pth", ".bin"))]


def test_hub_pattern_matching_nothing_is_refused(hub_svc):
    _, svc, _ = hub_svc
    r = svc.client.post("/api/runs", json={"run": "org/run", "revisions": "epoch-*"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "revision_not_found"
    assert "step-100" in r.json()["detail"]["message"]  # says what there is
    r = svc.client.post("/api/runs", json={"run": "org/none"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "not_found"
