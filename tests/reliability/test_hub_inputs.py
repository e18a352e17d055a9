"""Bad Hub inputs against a loopback Hub: each gets a clear message, and the service keeps serving.

The web app resolves revisions at submission and the worker reads the weights, both
over HTTP from tests/hubserver.py, which answers with the Hub's own status codes and
X-Error-Code headers (RepoNotFound, GatedRepo, RevisionNotFound, ...).
"""

from __future__ import annotations

import itertools

import pytest
from api import outcome, submit
from hub_service import BASE, GATED, TUNED, hub_and_service
from support.polling import wait_status

pytestmark = pytest.mark.timeout(180)

_fresh_tolerances = (2.5e-5 + k * 1e-9 for k in itertools.count())


@pytest.fixture(scope="module")
def hub_svc(tmp_path_factory):
    with hub_and_service(tmp_path_factory.mktemp("hub")) as (hub, svc):
        yield hub, svc


def refused(result, code: str, *words: str) -> None:
    assert result.status in ("rejected", "failed"), f"expected a refusal, got {result}"
    assert result.code == code, f"expected code {code!r}, got {result}"
    text = result.message.lower()
    assert len(text) >= 15, f"message too terse to help anyone: {result}"
    assert any(w.lower() in text for w in words), f"message names none of {words}: {result}"
    assert "traceback" not in text and "exception" not in text, f"internal error leaked: {result}"


def start_other(svc) -> str:
    """A good Hub analysis (new tolerance, so really computed), sent alongside the bad one."""
    r = submit(svc.client, BASE, TUNED, tolerance=next(_fresh_tolerances))
    assert r.status_code == 202, r.text
    return r.json()["id"]


def still_serving(svc, other: str) -> None:
    assert svc.client.get("/api/health").status_code == 200
    body = wait_status(svc.client, other, timeout=120)
    assert body["status"] == "done", body["error"]


# name -> (request fields, code, words a clear message uses)
CASES = {
    "malformed_id": ({"base": "not a repo id!!", "tuned": TUNED}, "bad_id", ("valid", "model id")),
    "malformed_id_double_dot": ({"base": "org/../etc", "tuned": TUNED}, "bad_id", ("valid", "model id")),
    "malformed_revision_field": ({"base": BASE, "tuned": TUNED, "tuned_revision": "v1; rm -rf /"},
                                 "bad_revision", ("revision",)),
    "malformed_revision_inline": ({"base": BASE, "tuned": f"{TUNED}@../../main"}, "bad_revision", ("revision",)),
    "unknown_repo": ({"base": BASE, "tuned": "org/does-not-exist"}, "not_found", ("not found",)),
    "gated_without_token": ({"base": BASE, "tuned": GATED}, "gated", ("gated", "token")),
    "gated_with_wrong_token": ({"base": BASE, "tuned": GATED, "token": "hf_notTheRightToken000"},
                               "gated", ("gated", "token", "access")),
    "unknown_revision": ({"base": BASE, "tuned": f"{TUNED}@no-such-branch"}, "revision_not_found",
                         ("no-such-branch", "revision")),
    "unknown_revision_field": ({"base": BASE, "tuned": TUNED, "tuned_revision": "0" * 40},
                               "revision_not_found", ("revision",)),
    "pickle_only": ({"base": BASE, "tuned": "org/pickle-only"}, "no_safetensors", ("safetensors",)),
    "malformed_file_on_hub": ({"base": BASE, "tuned": "org/truncated"}, "malformed", ("truncat", "bytes", "size")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_hub_input_is_refused_clearly(hub_svc, case):
    hub, svc = hub_svc
    fields, code, words = CASES[case]
    before = svc.client.get("/api/analyses", params={"limit": 1000}).json()["total"]
    other = start_other(svc)
    fields = dict(fields)
    result = outcome(svc.client, fields.pop("base"), fields.pop("tuned"), timeout=120, **fields)
    refused(result, code, *words)
    if result.status == "rejected":  # refused at the door: no record lingers
        assert svc.client.get("/api/analyses", params={"limit": 1000}).json()["total"] == before + 1
    still_serving(svc, other)


def test_pickle_only_repo_is_never_downloaded(hub_svc):
    hub, svc = hub_svc
    hub.clear_log()
    result = outcome(svc.client, BASE, "org/pickle-only", timeout=120)
    refused(result, "no_safetensors", "safetensors")
    fetched = [r for r in hub.requests if r.path.endswith(".bin") and r.method == "GET"]
    assert fetched == [], f"the pickle was fetched: {fetched}"


def test_branch_revision_is_pinned_to_its_commit(hub_svc):
    """A good revision resolves to a commit sha, and the result names it."""
    hub, svc = hub_svc
    result = outcome(svc.client, BASE, f"{TUNED}@v2", timeout=120, tolerance=next(_fresh_tolerances))
    assert result.status == "done", result
    tuned = result.body["result"]["tuned"]
    assert tuned["sha"] == hub.commit_sha(TUNED, "v2")
    assert tuned["sha"] != hub.commit_sha(TUNED, "main")
