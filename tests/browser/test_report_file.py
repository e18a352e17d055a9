"""The single-file report opened from file:// in Debian chromium with every network request
blocked: every figure renders (plotly drew its SVG), nothing was requested; screenshots saved."""

from __future__ import annotations

import re

import pytest

from frontend import report as R
from worker.demo.synthetic import write_demo
from worker.engine import AnalysisOptions, analyze, open_source, overlap, parse_source


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    dirs = write_demo(root / "ckpt")
    results, masks = {}, []
    for name in ("rl_a", "rl_b"):
        with open_source(parse_source(str(dirs["base"]), allow_any_path=True)) as b, \
                open_source(parse_source(str(dirs[name]), allow_any_path=True)) as t:
            results[name] = analyze(b, t, AnalysisOptions(tolerance=1e-5, rank="all", geometry="sampled", device="cpu"),
                                    masks_dir=root / name)
        masks.append(root / name / "masks.safetensors")
    ov = overlap(masks, labels=["rl_a", "rl_b"])
    out = {"analysis": root / "analysis.html", "overlap": root / "overlap.html"}
    out["analysis"].write_text(R.analysis_report(results["rl_a"], overlap=ov))
    out["overlap"].write_text(R.overlap_report(ov))
    return out


@pytest.mark.parametrize("which", ["analysis", "overlap"])
def test_report_renders_every_figure_offline(reports, browser, shot, which):
    # the network is off for the page (offline) and every request that is not the file is aborted
    ctx = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    requested: list[str] = []

    def block(route):
        if not route.request.url.startswith("file://"):
            requested.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    ctx.route("**/*", block)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else requested.append(r.url))
    page.goto(reports[which].as_uri())
    n = page.locator(".report-figure").count()
    assert n == (12 if which == "analysis" else 3)  # rank and geometry computed: all sections, magnitude too
    # plotly drew every one: each holds its SVG and at least one trace or annotation
    page.wait_for_function(f"document.querySelectorAll('.report-figure .main-svg').length >= {n}", timeout=30_000)
    drawn = page.evaluate("""() => [...document.querySelectorAll('.report-figure')].map(d =>
        d.querySelectorAll('.trace, .annotation, .scatterlayer path, .heatmaplayer image').length)""")
    assert all(k > 0 for k in drawn), drawn
    assert errors == [] and requested == []
    shot(page, f"report-{which}-file")
    ctx.close()


def _done(svc, tuned: str) -> dict:
    from support.polling import wait_status
    from test_browser_pages import UI_TOLERANCE

    r = svc.client.post("/api/analyses", json={"base": svc.demo("base"), "tuned": svc.demo(tuned),
                                               "tolerance": UI_TOLERANCE})
    body = wait_status(svc.client, r.json()["id"], timeout=150)
    assert body["status"] == "done", body.get("error")
    return body


def _undated(page_html: str) -> str:
    """Without the minute the report was written."""
    return re.sub(r"Written by Subnetscope on [^.]+\.", "", page_html)


def _download(page, button: str, tmp_path, name: str) -> str:
    with page.expect_download(timeout=60_000) as info:
        page.click(button)
    path = tmp_path / name
    info.value.save_as(str(path))
    return path.read_text()


@pytest.mark.browser
def test_download_report_buttons(page, svc, tmp_path, shot):
    from frontend import summary as S

    a, b = _done(svc, "rl_a"), _done(svc, "rl_b")
    page.goto(f"/a/{a['id']}")
    page.wait_for_selector("#stat-sparsity", timeout=150_000)
    assert page.inner_text("#an-summary") == S.plain_summary(a["result"])
    shot(page, "analysis-plain-summary")
    html_text = _download(page, "#dl-report", tmp_path, "a.html")
    assert _undated(html_text) == _undated(R.analysis_report(a["result"]))  # the page's button, the same report
    page.goto(f"/overlap?ids={a['id']},{b['id']}")
    page.wait_for_selector("#ov-report", timeout=60_000)
    assert "if they were placed at random" in page.inner_text("#ov-summary")
    ov_html = _download(page, "#ov-report", tmp_path, "ov.html")
    assert ov_html.count('class="report-figure"') == 3
    page.goto(f"/compare?ids={a['id']},{b['id']}")
    page.wait_for_selector("#compare-table tbody tr[data-id]")
    cmp_html = _download(page, "#cmp-report", tmp_path, "cmp.html")
    assert S.plain_summary(b["result"]).split(";")[0] in cmp_html
    assert not page.js_errors
