"""The trained demo family's runs and finals in a real browser, on a service that trains it itself.

The shared `svc` runs with SUBNETSCOPE_DEMO_TRAINING=off; this module starts its own service
(tests/support/service.py: start_service) with SUBNETSCOPE_DEMO_TRAINING=quick, as `make run` does with
the full schedule, and overrides `svc` so the browser fixtures (tests/browser/conftest.py) use it.
From the home page's "RL run" chip to the run page, whose numbers must be GET /api/runs/{id}'s;
then the overlap page's "trained · SFT & RL" suggestion.
"""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect
from support.polling import wait_for
from support.service import start_service

from frontend import numbers as N

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN_TIMEOUT_S = 180.0
DONE_TIMEOUT_MS = 240_000
BASE, RL_RUN = "local:demo/trained/base", "local:demo/trained/rl_run"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """A service that trains the demo's trained family in the background (quick schedule)."""
    service = start_service(tmp_path_factory.mktemp("svc_trained"), SUBNETSCOPE_DEMO_TRAINING="quick")
    try:
        trained: dict = {}

        def built() -> bool:
            trained.clear()
            trained.update(service.client.get("/api/demo").json()["trained"])
            return trained.get("state") in ("ready", "failed")

        wait_for(built, TRAIN_TIMEOUT_S, "the trained family", interval=0.5, ignore=(httpx.HTTPError,),
                 details=lambda: service.log_text("web.log")[-3000:])
        assert trained.get("state") == "ready", f"the trained family was not built: {trained}\n" \
                                                f"{service.log_text('web.log')[-3000:]}"
        assert trained["mode"] == "quick" and RL_RUN in trained["runs"]
        yield service
    finally:
        service.close()


def _cell_texts(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))")


def test_rl_run_chip_opens_the_run_page_whose_numbers_are_the_apis(page, svc, shot):
    page.goto("/")
    expect(page.locator("#home-dynamics")).to_be_visible()
    expect(page.locator("#home-dynamics h2")).to_have_text("Training dynamics")
    chip = page.get_by_role("button", name="RL run", exact=True)
    expect(chip).to_be_visible(timeout=15_000)
    expect(page.get_by_role("button", name="SFT run", exact=True)).to_be_visible()
    chip.click()
    page.wait_for_url(re.compile(r"/r/[0-9a-f]{16}$"), timeout=60_000)
    rid = page.url.rsplit("/", 1)[-1]

    body = svc.client.get(f"/api/runs/{rid}").json()
    assert body["request"]["base"] == BASE and body["request"]["run"] == RL_RUN
    assert body["request"]["base_name"] is None  # step 0 is the pretrained base, not the run's first checkpoint
    names = [c["name"] for c in body["checkpoints"]]
    assert names == ["checkpoint-4", "checkpoint-8", "checkpoint-12", "checkpoint-16"]  # QUICK: rl_save_every 4

    # running, when it still is (the quick family's tiny model may already be done: then only the finished state)
    page.wait_for_selector("#rn-progress-table tbody tr, #rn-stat-final", timeout=60_000)
    if page.locator("#rn-progress-table tbody tr").count() and svc.client.get(f"/api/runs/{rid}").json()["status"] != "done":
        expect(page.locator("#rn-progress-table tbody tr")).to_have_count(len(names))
        expect(page.locator("#rn-progress-text")).to_contain_text("checkpoints")
        shot(page, "trained-rl-run-running")

    # finished: every number on the page is the API's
    page.wait_for_selector("#rn-stat-final", timeout=DONE_TIMEOUT_MS)
    body = svc.client.get(f"/api/runs/{rid}").json()
    assert body["status"] == "done", body["error"]
    result = body["result"]
    page.wait_for_function("() => /[?&]t=1e-5(&|$)/.test(window.location.search)")
    key = N.tol_key(1e-5)
    cps = result["checkpoints"]
    last = cps[-1]
    cons = [c["consecutive"]["sparsity"][key] for c in cps]
    expect(page.locator("#rn-stat-final")).to_have_text(N.fmt_pct(last["sparsity"][key]))
    expect(page.locator("#rn-stat-consecutive")).to_have_text(N.fmt_pct(sum(cons) / len(cons)))
    expect(page.locator("#rn-stat-ever")).to_have_text(N.fmt_pct(last["ever_density"]))
    expect(page.locator("#rn-stat-outside")).to_have_text(N.fmt_pct(last["outside_share"]))
    expect(page.locator("#rn-results-table tbody tr")).to_have_count(len(names))
    rows = _cell_texts(page, "#rn-results-table")
    for row, c in zip(rows, cps):
        assert row[:9] == [str(c["step"]), c["name"], N.fmt_pct(c["sparsity"][key]),
                           N.fmt_pct(c["consecutive"]["sparsity"][key]), N.fmt_pct(c["ever_density"]),
                           N.fmt_pct(c["outside_share"]), N.fmt_pct(c["o1"]), N.fmt_pct(c["o2"]),
                           N.fmt_pct(c["random_o1"])], (row, c["name"])
    for graph in ("#fig-run-sparsity", "#fig-run-consecutive", "#fig-run-ever", "#fig-run-heatmap"):
        page.wait_for_selector(f"{graph} .main-svg")
    shot(page, "trained-rl-run-finished")

    # the home page lists it among the recent runs, with the final sparsity
    page.goto("/")
    row = page.locator(f"#recent-runs-table tbody tr[data-id='{rid}']")
    expect(row).to_be_visible()
    expect(row.locator("td").nth(3)).to_have_text(N.fmt_pct(last["sparsity"][key]))
    expect(row.get_by_role("link")).to_have_attribute("href", f"/r/{rid}")
    shot(page, "trained-home-dynamics")
    assert page.js_errors == []


def test_overlap_suggestion_compares_the_trained_sft_and_rl_finals(page, svc, shot):
    page.goto("/overlap")
    chip = page.get_by_role("button", name="trained · SFT & RL", exact=True)
    expect(chip).to_be_visible(timeout=15_000)
    chip.click()
    page.wait_for_url(re.compile(r"/overlap\?ids=[0-9a-f]{16},[0-9a-f]{16}$"), timeout=DONE_TIMEOUT_MS)
    page.wait_for_selector("#overlap-numbers", timeout=DONE_TIMEOUT_MS)
    ids = page.url.split("ids=", 1)[1].split(",")
    # the finals against the pretrained base (content ids: trained/rl is the RL run's last checkpoint, so
    # after the run above its analysis is the one the run made, recorded under that checkpoint's name)
    for aid, tuned in zip(ids, ("local:demo/trained/sft", "local:demo/trained/rl")):
        r = svc.client.post("/api/analyses", json={"base": BASE, "tuned": tuned})
        assert r.status_code == 200 and r.json()["id"] == aid, r.text
    r = svc.client.post("/api/overlaps", json={"analyses": ids})
    assert r.status_code == 200, r.text
    ov = svc.client.get(f"/api/overlaps/{r.json()['id']}").json()["result"]
    text = page.inner_text("#overlap-numbers")
    for value in (ov["o1"], ov["o2"], ov["jaccard"], ov["random_o1"]):
        assert f"{100 * value:.2f} %" in text
    shot(page, "trained-overlap-sft-rl")
    assert page.js_errors == []
