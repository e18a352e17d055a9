"""The lineage page: submit the demo question, see the parent ranked first with its verdict."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.timeout(300)


def test_lineage_page_ranks_the_demo_parent_first(page, svc, shot):
    page.goto("/lineage")
    page.wait_for_selector("#lg-tuned")
    expect(page.locator("#lg-tuned")).to_have_value("local:demo/rl_a")
    page.click("#lg-go")
    page.wait_for_url(re.compile(r"/l/[0-9a-f]+"), timeout=30_000)
    expect(page.locator("#lg-verdict")).to_contain_text("Most likely parent: local:demo/base", timeout=120_000)
    first_row = page.locator("#lg-table tbody tr").first
    expect(first_row).to_contain_text("local:demo/base")
    shot(page, "lineage")
    # the permalink reopens the same ranking
    page.reload()
    expect(page.locator("#lg-verdict")).to_contain_text("Most likely parent: local:demo/base", timeout=30_000)
