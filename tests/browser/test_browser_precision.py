"""The Precision tab and the compare page's precision columns on the trained demo's RL and SFT pairs,
stored in bf16 and as their fp32 masters, in a real browser against the real service.

The family is built quick (as `serve` would) unless SUBNETSCOPE_TEST_TRAINED_DEMO names a folder that
already holds a trained family (`subnetscope demo --trained DIR`), whose `trained/` is then copied in:
screenshots of the full demo without training it in the test.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect
from support.polling import wait_status

from app.cli import demo_training

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DONE_TIMEOUT_MS = 150_000
PAIRS = {"rl": ("trained/base", "trained/rl"), "sft": ("trained/base", "trained/sft"),
         "rl-fp32": ("trained/base_fp32", "trained/rl_fp32"), "sft-fp32": ("trained/base_fp32", "trained/sft_fp32")}


def _family(svc) -> None:
    demo = svc.local_root / "demo"
    given = os.environ.get("SUBNETSCOPE_TEST_TRAINED_DEMO")
    if demo_training.present(demo):
        return
    if given:
        shutil.rmtree(demo / "trained", ignore_errors=True)
        shutil.copytree(Path(given) / "trained", demo / "trained")
    else:
        assert demo_training.build(demo, "quick") == 0


def _done(svc, base: str, tuned: str) -> dict:
    r = svc.client.post("/api/analyses", json={"base": f"local:demo/{base}", "tuned": f"local:demo/{tuned}"})
    assert r.status_code in (200, 202), r.text
    body = wait_status(svc.client, r.json()["id"], timeout=150, interval=0.2)
    assert body["status"] == "done", body.get("error")
    return body


def test_precision_tab_and_compare_columns_on_the_trained_pairs(page, svc, shot):
    _family(svc)
    bodies = {name: _done(svc, *pair) for name, pair in PAIRS.items()}
    for name, body in bodies.items():
        p = body["result"]["summary"]["precision"]
        page.goto(f"/a/{body['id']}?tab=precision")
        page.wait_for_selector("#fig-precision-magnitude .main-svg", timeout=DONE_TIMEOUT_MS)
        page.wait_for_selector("#fig-precision-onestep .main-svg")
        page.wait_for_selector("#fig-ulp .main-svg")
        text = page.inner_text("#precision-sentence")
        # one line per exact tolerance on the magnitude figure
        assert page.locator("#fig-precision-magnitude .scatterlayer .trace").count() == len(p["changed"])
        if name.endswith("fp32"):
            cf = p["counterfactual"]["bfloat16"]
            page.wait_for_selector("#fig-precision-counterfactual .main-svg")
            assert f"{cf['rounded']['0.0']:,} of the {cf['stored']['0.0']:,}" in text
            # the fp32 master's updates that survive bf16 rounding are exactly the bf16 checkpoints' changes
            bf16 = bodies[name.removesuffix("-fp32")]["result"]["summary"]["changed"]["0.0"]
            assert cf["rounded"]["0.0"] == bf16
        else:
            assert page.locator("#fig-precision-counterfactual").count() == 0
            assert "no storage counterfactual applies" in text
        expect(page.locator("#precision-cosine")).to_have_text(re.compile(r"0\.\d{10}"))
        shot(page, f"analysis-precision-trained-{name}")
    ids = ",".join(b["id"] for b in bodies.values())
    page.goto(f"/compare?ids={ids}")
    page.wait_for_selector("#compare-precision tbody tr[data-id]", timeout=DONE_TIMEOUT_MS)
    assert "bf16 erases" in page.inner_text("#compare-precision thead")
    assert page.locator("#compare-precision td.prec").count() == 4 * len(bodies)
    rl_row = page.locator(f"#compare-precision tr[data-id='{bodies['rl-fp32']['id']}']")
    expect(rl_row.locator("td.prec").nth(2)).to_have_text(re.compile(r"\d+\.\d+ %"))
    shot(page, "compare-precision-trained")
    assert not page.js_errors
