"""The training-run page /r/<id> in a real browser against the real service: running, then finished."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from playwright.sync_api import expect
from run_checkpoints import save, train_step

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DONE_TIMEOUT_MS = 240_000


def _pct(text: str) -> float:
    m = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    assert m, f"no number in {text!r}"
    return float(m.group())


def _write_run(root, steps=(100, 200, 300, 400)):
    """Enough tensors that the run is still computing while the page is looked at."""
    gen = torch.Generator().manual_seed(9)
    base = {}
    for i in range(8):
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            base[f"model.layers.{i}.self_attn.{m}.weight"] = (torch.randn(256, 256, generator=gen) * 0.02).to(torch.bfloat16)
        base[f"model.layers.{i}.mlp.up_proj.weight"] = (torch.randn(512, 256, generator=gen) * 0.02).to(torch.bfloat16)
    save(root / "base", base)
    state = base
    for k, step in enumerate(steps):
        state = train_step(state, gen, move=0.05 + 0.04 * k, revert=0.15, base=base)
        save(root / "run" / f"checkpoint-{step}", state)


def test_run_page_running_then_finished(page, svc, shot, tmp_path):
    _write_run(svc.local_root / "runs" / "browser")
    r = svc.client.post("/api/runs", json={"base": "local:runs/browser/base", "run": "local:runs/browser/run",
                                           "tolerance": 1e-5})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]

    page.goto(f"/r/{rid}")
    # running: per-checkpoint progress, each analysis linked to its page
    page.wait_for_selector("#rn-progress-table tbody tr")
    expect(page.locator("#rn-progress-table tbody tr")).to_have_count(4)
    first_link = page.locator("#rn-progress-table tbody tr").first.get_by_role("link", name="vs base")
    assert re.fullmatch(r"/a/[0-9a-f]{16}", first_link.get_attribute("href"))
    body = svc.client.get(f"/api/runs/{rid}").json()
    running = body["status"] != "done"
    shot(page, "run-running")
    assert running, "the run finished before the page could show it running"
    expect(page.locator("#rn-progress-text")).to_contain_text("checkpoints")

    # finished: the figures and the table, at the run's tolerance
    page.wait_for_selector("#rn-stat-final", timeout=DONE_TIMEOUT_MS)
    body = svc.client.get(f"/api/runs/{rid}").json()
    assert body["status"] == "done"
    result = body["result"]
    last = result["checkpoints"][-1]
    page.wait_for_function("() => /[?&]t=1e-5(&|$)/.test(window.location.search)")
    assert _pct(page.inner_text("#rn-stat-final")) == pytest.approx(100 * last["sparsity"]["1e-05"], abs=0.006)
    assert _pct(page.inner_text("#rn-stat-outside")) == pytest.approx(100 * last["outside_share"], abs=0.006)
    expect(page.locator("#rn-results-table tbody tr")).to_have_count(4)
    for graph in ("#fig-run-sparsity", "#fig-run-consecutive", "#fig-run-ever", "#fig-run-heatmap"):
        page.wait_for_selector(f"{graph} .main-svg")
    shot(page, "run-finished")

    # the Download report button: the run's figures at the view's tolerance, in one offline file
    with page.expect_download(timeout=60_000) as info:
        page.click("#rn-report")
    report = tmp_path / "run.html"
    info.value.save_as(str(report))
    text = report.read_text()
    assert text.count('class="report-figure"') == 4 and last["name"] in text and "https://" not in text.split(
        "</script>", 1)[1]

    # view state in the URL: tolerance and heatmap metric; a reload keeps them
    page.locator("#rn-tol").click()
    page.get_by_text("1e-4", exact=True).click()
    page.locator("#rn-hm").get_by_text("ever-changed density").click()
    page.wait_for_function("() => /t=1e-4/.test(window.location.search) && /hm=ever/.test(window.location.search)")
    assert parse_qs(urlparse(page.url).query) == {"t": ["1e-4"], "hm": ["ever"]}
    expect(page.locator("#rn-sparsity-title")).to_have_text("Sparsity vs step at t = 1e-4")
    assert _pct(page.inner_text("#rn-stat-final")) == pytest.approx(100 * last["sparsity"]["0.0001"], abs=0.006)
    page.goto(page.url)
    page.wait_for_selector("#rn-stat-final", timeout=DONE_TIMEOUT_MS)
    expect(page.locator("#rn-sparsity-title")).to_have_text("Sparsity vs step at t = 1e-4")
    expect(page.locator("#rn-heatmap-title")).to_contain_text("ever-changed density")
    shot(page, "run-finished-1e-4-ever")

    # a point opens its analysis
    page.wait_for_selector("#fig-run-sparsity .scatterlayer .point")
    box = page.locator("#fig-run-sparsity .scatterlayer .point").nth(1).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    time.sleep(0.3)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url(re.compile(rf"/a/{result['checkpoints'][1]['analysis']}"))
    page.wait_for_selector("#stat-sparsity", timeout=DONE_TIMEOUT_MS)
    assert not page.js_errors
