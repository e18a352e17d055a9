"""Shared fixtures: `svc`, the whole service as separate real processes on loopback
(tests/support/service.py), for the session; `keeps_serving`, a check that it still computes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from pathlib import Path

import pytest
from support.polling import wait_status
from support.service import start_service

ANALYSIS_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    service = start_service(root)
    yield service
    service.close()
    if os.environ.get("SUBNETSCOPE_KEEP_TEST_LOGS"):
        dest = Path(os.environ["SUBNETSCOPE_KEEP_TEST_LOGS"])
        shutil.copytree(service.logs_dir, dest, dirs_exist_ok=True)


# Distinct tolerances so each check computes afresh instead of hitting the dedup.
_probe_tolerances = (1.5e-5 + k * 1e-9 for k in itertools.count())


@pytest.fixture
def keeps_serving(svc):
    """`with keeps_serving(): ...` then asserts the service is healthy and still computes."""

    @contextlib.contextmanager
    def check():
        yield
        r = svc.client.get("/api/health")
        assert r.status_code == 200, f"health after the test: {r.status_code} {r.text}"
        tolerance = next(_probe_tolerances)
        r = svc.client.post("/api/analyses", json={"base": svc.demo("base"), "tuned": svc.demo("rl_a"),
                                                  "tolerance": tolerance})
        assert r.status_code in (200, 201, 202), f"fresh analysis refused: {r.status_code} {r.text}"
        body = wait_status(svc.client, r.json()["id"], timeout=ANALYSIS_TIMEOUT_S)
        assert body["status"] == "done", f"fresh analysis did not finish: {body.get('error')}"

    return check
