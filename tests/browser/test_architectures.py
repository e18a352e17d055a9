"""Real architectures in the dashboard: separate stacks get separate heatmap blocks.

The checkpoints are the corpus's T5 and Llava pairs (tests/corpus/build.py), written
under the service's local root and analysed through the real API and worker.
"""

from __future__ import annotations

import pytest
from support.polling import wait_status
from test_browser_pages import DONE_TIMEOUT_MS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def corpus_pairs(svc):
    from tests.corpus.build import build_corpus

    root = svc.local_root / "corpus"
    entries = build_corpus(root, only=["t5", "llava"])
    return {name: (f"local:{e.base_dir.relative_to(svc.local_root)}", f"local:{e.tuned_dir.relative_to(svc.local_root)}")
            for name, e in entries.items()}


@pytest.mark.parametrize("name, stacks", [
    ("t5", ["decoder.block", "encoder.block"]),
    ("llava", ["language_model.model.layers", "vision_tower.encoder.layers"]),
])
def test_heatmap_shows_one_block_per_stack(page, svc, shot, corpus_pairs, name, stacks):
    base, tuned = corpus_pairs[name]
    r = svc.client.post("/api/analyses", json={"base": base, "tuned": tuned})
    assert r.status_code in (200, 202), r.text
    body = wait_status(svc.client, r.json()["id"], timeout=150, interval=0.2)
    assert body["status"] == "done", body.get("error")
    rows = body["result"]["layers"]
    assert sorted({row["stack"] for row in rows if row["stack"]}) == stacks
    page.goto(f"/a/{body['id']}?tab=layers")
    page.wait_for_selector("#fig-heatmap .main-svg", timeout=DONE_TIMEOUT_MS)
    # One subplot per stack, each titled with the stack's distinguishing name.
    titles = page.locator("#fig-heatmap .annotation-text").all_text_contents()
    assert sorted(titles) == sorted(_short(stacks)), titles
    assert page.locator("#fig-heatmap .heatmaplayer").count() == 2
    shot(page, f"architecture-{name}-heatmap")


def _short(stacks: list[str]) -> list[str]:
    from frontend.numbers import stack_labels

    return list(stack_labels(stacks).values())
