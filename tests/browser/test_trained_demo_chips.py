"""The home page follows the trained demo family: progress while it trains, its chips once it exists."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.cli import demo_training

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_home_shows_training_progress_then_the_trained_pairs(page, svc, shot):
    demo = svc.local_root / "demo"
    if not demo_training.present(demo):
        # What `serve` writes while it trains (the service under test runs with SUBNETSCOPE_DEMO_TRAINING=off).
        demo_training.write_status(demo, state="training", percent=40.0, stage="RL", mode="quick")
        page.goto("/")
        expect(page.locator("#demo-training")).to_have_text("training the demo: 40 % (RL)", timeout=10_000)
        expect(page.get_by_role("button", name="trained · RL")).to_have_count(0)
        shot(page, "home-demo-training")
        assert demo_training.build(demo, "quick") == 0  # the same build serve runs in the background
    else:
        page.goto("/")
    # The page polls every 4 s; the chips appear without a reload.
    expect(page.get_by_role("button", name="trained · RL")).to_be_visible(timeout=15_000)
    page.get_by_role("button", name="trained · RL").click()
    expect(page.locator("#f-base")).to_have_value("local:demo/trained/base")
    expect(page.locator("#f-tuned")).to_have_value("local:demo/trained/rl")
    shot(page, "home-demo-trained")
    page.click("#f-submit")
    page.wait_for_url(re.compile(r"/a/[0-9a-f]+"), timeout=30_000)
    page.wait_for_selector("#stat-sparsity", timeout=150_000)
    assert page.js_errors == []
