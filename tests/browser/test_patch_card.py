"""The analysis page states the patch size before export, and "Export patch" ends in a download."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from support.polling import wait_status

pytestmark = pytest.mark.timeout(300)


def test_patch_card_estimates_exports_and_downloads(page, svc, shot):
    r = svc.client.post("/api/analyses", json={"base": svc.demo("base"), "tuned": svc.demo("rl_b"), "tolerance": 1e-5})
    aid = r.json()["id"]
    finished = wait_status(svc.client, aid, timeout=150)
    assert finished["status"] == "done"
    page.goto(f"/a/{aid}")
    estimate = page.locator("#pc-estimate")
    expect(estimate).to_contain_text("A lossless patch of this update: about", timeout=60_000)
    expect(estimate).to_contain_text(f"{100 * finished['result']['patch']['share']:.1f} % of the checkpoint")
    page.click("#pc-export")
    expect(page.locator("#pc-download")).to_be_visible(timeout=90_000)
    expect(page.locator("#pc-state")).to_contain_text("Ready:")
    shot(page, "patch-card")
    with page.expect_download() as info:
        page.click("#pc-download")
    body = svc.client.get(f"/api/analyses/{aid}/patch").json()
    assert body["status"] == "done"
    assert info.value.path().stat().st_size == body["bytes"]
