"""The Geometry tab and the tensor drill-down in a real browser against the real service."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from playwright.sync_api import expect
from support.polling import wait_status

from worker.demo.synthetic import _config, write_checkpoint

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DONE_TIMEOUT_MS = 150_000
BIG_VOCAB = 131_072  # a 128k-row embedding (x 8 columns): the drill-down streams its mask


def _done(svc, request: dict) -> dict:
    r = svc.client.post("/api/analyses", json=request)
    assert r.status_code in (200, 202), r.text
    body = wait_status(svc.client, r.json()["id"], timeout=150, interval=0.2)
    assert body["status"] == "done", body.get("error")
    return body


def _pct(text: str) -> float:
    return float(re.search(r"-?\d+(?:\.\d+)?", text.replace(",", "")).group())


def test_geometry_tab_and_click_through(page, svc, shot):
    body = _done(svc, {"base": svc.demo("base"), "tuned": svc.demo("sft"), "tolerance": 1.2e-5,
                       "geometry": "sampled"})
    g = body["result"]["summary"]["geometry"]
    assert g["mode"] == "sampled" and g["matrices"] > 0
    page.goto(f"/a/{body['id']}?tab=geometry")
    page.wait_for_selector("#fig-geo-heatmap .main-svg", timeout=DONE_TIMEOUT_MS)
    page.wait_for_selector("#fig-geo-energy .main-svg")
    page.wait_for_selector("#fig-geo-layers .main-svg")
    i = g["q"].index(0.05)
    assert _pct(page.inner_text("#geo-energy")) == pytest.approx(100 * g["energy"]["two_sided"][i], abs=0.0006)
    assert f"{g['rotation']['u_mean_sin'][i]:.4f}" in page.inner_text("#geo-rotation")
    assert parse_qs(urlparse(page.url).query)["tab"] == ["geometry"]
    shot(page, "analysis-geometry")
    # a heatmap cell opens its tensor
    drag = page.locator("#fig-geo-heatmap .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)
    # client-side navigation: no load event, so wait on the location itself
    page.wait_for_function(f"() => /^\\/a\\/{body['id']}\\/t\\/model\\.layers\\.\\d+\\./.test(location.pathname)")
    page.wait_for_selector("#tn-spectra .main-svg")
    expect(page.locator("#tn-energy")).to_have_text(re.compile(r"\d+\.\d+ %"))
    page.wait_for_selector("#tn-density .main-svg")
    shot(page, "tensor-drilldown-geometry")
    # the analysis without geometry says how to get it
    plain = _done(svc, {"base": svc.demo("base"), "tuned": svc.demo("rl_b"), "tolerance": 1.2e-5})
    page.goto(f"/a/{plain['id']}?tab=geometry")
    page.wait_for_selector("#geo-missing", timeout=DONE_TIMEOUT_MS)
    assert "--geometry" in page.inner_text("#an-tab-content")
    # compare shows geometry columns side by side
    page.goto(f"/compare?ids={body['id']},{plain['id']}")
    page.wait_for_selector("#compare-table tbody tr[data-id]")
    assert "Principal energy" in page.inner_text("#compare-table thead")
    assert page.locator("#compare-table td.geo").count() == 3
    shot(page, "compare-geometry")
    assert not page.js_errors


def _big_pair(root):
    gen = torch.Generator().manual_seed(7)
    base = {"model.embed_tokens.weight": (torch.randn(BIG_VOCAB, 8, generator=gen) * 0.02).to(torch.bfloat16)}
    for i in range(2):
        base[f"model.layers.{i}.self_attn.q_proj.weight"] = (torch.randn(8, 8, generator=gen) * 0.02).to(torch.bfloat16)
    tuned = dict(base)
    emb = base["model.embed_tokens.weight"].float()
    # a band of "new-task" token rows moves, plus sparse noise elsewhere: visible structure in the image
    where = torch.zeros(emb.shape, dtype=torch.bool)
    where[20_000:36_000] = True
    where |= torch.rand(emb.shape, generator=gen) < 0.02
    where[:, 5] |= torch.rand(BIG_VOCAB, generator=gen) < 0.3
    tuned["model.embed_tokens.weight"] = torch.where(where, (emb * 1.05).to(torch.bfloat16),
                                                     base["model.embed_tokens.weight"])
    tuned["model.layers.1.self_attn.q_proj.weight"] = (base["model.layers.1.self_attn.q_proj.weight"].float()
                                                       * 1.1).to(torch.bfloat16)
    cfg = {**_config(BIG_VOCAB), "hidden_size": 8, "num_hidden_layers": 2}
    write_checkpoint(root / "base", base, cfg)
    write_checkpoint(root / "tuned", tuned, cfg)


def test_drilldown_of_a_128k_row_embedding(page, svc, shot):
    root = svc.local_root / "bigembed"
    if not (root / "tuned").exists():
        _big_pair(root)
    body = _done(svc, {"base": "local:bigembed/base", "tuned": "local:bigembed/tuned", "tolerance": 1e-5,
                       "geometry": "all"})
    name = "model.embed_tokens.weight"
    rec = next(t for t in body["result"]["tensors"] if t["name"] == name)
    dens = svc.client.get(f"/api/analyses/{body['id']}/tensors/{name}/density").json()
    assert dens["shape"] == [BIG_VOCAB, 8] and len(dens["density"]) == 256 and len(dens["density"][0]) == 8
    assert dens["changed"] == rec["changed"]["1e-05"]
    assert svc.client.get(f"/api/analyses/{body['id']}/tensors/nope/density").status_code == 404
    # reached from the tensor table, by clicking the row
    page.goto(f"/a/{body['id']}?tab=tensors")
    page.wait_for_selector("#tensor-table", timeout=DONE_TIMEOUT_MS)
    page.locator("#tensor-table td[data-dash-column=name]", has_text=name).first.click()
    page.wait_for_function(f"() => location.pathname === '/a/{body['id']}/t/{name}'")
    page.wait_for_selector("#tn-density .main-svg")
    page.wait_for_selector("#tn-coverage .main-svg")
    page.wait_for_selector("#tn-spectra .main-svg")
    expect(page.locator("#tn-changed")).to_have_text(f"{rec['changed']['1e-05']:,}")
    page.locator("#tn-scale").get_by_text("log").click()
    page.wait_for_function("() => /scale=log/.test(window.location.search)")
    shot(page, "tensor-drilldown-embedding-128k")
    # the permalink reopens the same view
    url = page.url
    page.goto("/")
    page.goto(url)
    page.wait_for_selector("#tn-density .main-svg")
    assert page.is_checked("#tn-scale input[value=log]")
    assert not page.js_errors
