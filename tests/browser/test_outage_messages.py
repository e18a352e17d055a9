"""The submit form says what is happening: resolving on the Hub, a Hub outage, a Redis outage, a token.

A service of this module's own, as a shared deployment would run it: pointed at a loopback
Hub that can be made to hang (tests/hubserver.py), with a short Hub budget
(SUBNETSCOPE_HUB_TIMEOUT_S) and an API token (SUBNETSCOPE_API_TOKEN) the form must carry.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import pytest
import torch
from playwright.sync_api import expect
from safetensors.torch import save_file
from support.service import start_service

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BUDGET_S = 6
API_TOKEN = "ui-deployment-token-5c2d"
VIEWPORT = {"width": 1360, "height": 900}


def _write(directory, seed: int, nudge: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    state = {f"model.layers.{i}.self_attn.{m}.weight": torch.randn(64, 64, generator=gen).to(torch.bfloat16)
             for i in range(2) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    if nudge:
        state = {k: (v.float() + 0.01).to(torch.bfloat16) for k, v in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from hubserver import HubServer

    root = tmp_path_factory.mktemp("ui-outages")
    _write(root / "repos" / "org" / "base", 1, False)
    _write(root / "repos" / "org" / "tuned", 1, True)
    hub = HubServer(root / "repos").start()
    svc = None
    try:
        svc = start_service(root / "svc", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                            SUBNETSCOPE_HUB_TIMEOUT_S=str(BUDGET_S), SUBNETSCOPE_API_TOKEN=API_TOKEN)
        yield hub, svc
    finally:
        hub.unhang()
        if svc is not None:
            svc.close()
        hub.stop()


@pytest.fixture
def ui(browser, deployment):
    _, svc = deployment
    ctx = browser.new_context(viewport=VIEWPORT, base_url=svc.base_url)
    ctx.set_default_timeout(30_000)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors  # type: ignore[attr-defined]
    yield page
    ctx.close()


def _fill(page, base: str, tuned: str, api_token: str | None = API_TOKEN) -> None:
    page.goto("/")
    page.wait_for_selector("#f-base")
    page.fill("#f-base", base)
    page.fill("#f-tuned", tuned)
    if api_token is not None:
        expect(page.locator("#f-api-token")).to_be_visible()
        page.fill("#f-api-token", api_token)


def test_hub_outage_says_resolving_then_the_apis_own_message(ui, deployment, shot):
    hub, _ = deployment
    hub.hang()
    try:
        _fill(ui, "org/base", "org/tuned")
        ui.click("#f-submit")
        pending = ui.locator("#f-msg")
        expect(pending).to_contain_text("Resolving org/base and org/tuned on the Hub…", timeout=5_000)
        expect(ui.locator("#f-submit")).to_be_disabled()
        shot(ui, "home-resolving-on-hub")
        error = ui.locator("#f-msg .notice-error")
        error.wait_for(timeout=(BUDGET_S + 60) * 1000)
    finally:
        hub.unhang()
    text = error.inner_text()
    assert "Hugging Face Hub did not answer" in text and "org/base" in text, text
    assert "Redis" not in text
    assert urlparse(ui.url).path == "/"
    expect(ui.locator("#f-submit")).to_be_enabled()
    shot(ui, "home-hub-outage")
    assert not ui.js_errors


def test_redis_outage_on_submit_says_redis(ui, deployment, shot):
    _, svc = deployment
    _fill(ui, "local:demo/base", "local:demo/rl_a")
    svc.kill_redis()
    try:
        ui.click("#f-submit")
        error = ui.locator("#f-msg .notice-error")
        error.wait_for(timeout=60_000)
        text = error.inner_text()
        assert "Redis" in text and "Hub" not in text, text
        shot(ui, "home-redis-outage")
    finally:
        svc.start_redis()
        if svc.worker is not None and svc.worker.poll() is not None:
            svc.start_worker()


def test_form_submits_with_the_deployments_api_token(ui, deployment, shot):
    _fill(ui, "local:demo/base", "local:demo/rl_b", api_token=None)
    expect(ui.locator("#f-api-token")).to_be_visible()  # the deployment asks for it
    ui.click("#f-submit")
    error = ui.locator("#f-msg .notice-error")
    error.wait_for(timeout=30_000)
    assert "API token" in error.inner_text()
    shot(ui, "home-api-token-missing")

    ui.fill("#f-api-token", API_TOKEN)
    ui.click("#f-submit")
    ui.wait_for_url(re.compile(r"/a/[0-9a-f]{16}"), timeout=60_000)
    ui.wait_for_selector("#stat-sparsity", timeout=150_000)
    assert API_TOKEN not in ui.url and API_TOKEN not in ui.content()
    assert not ui.js_errors
