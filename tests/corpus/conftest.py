"""The corpus is built once per test session (about 5 s after the imports), in a tmp dir."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("transformers", minversion="5")
pytest.importorskip("peft")

from .build import build_corpus  # noqa: E402


@pytest.fixture(scope="session")
def corpus_build(tmp_path_factory) -> dict:
    """{"entries": name -> Entry, "seconds": build time}."""
    root = tmp_path_factory.mktemp("corpus")
    started = time.perf_counter()
    entries = build_corpus(root)
    return {"entries": entries, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="session")
def corpus(corpus_build):
    return corpus_build["entries"]
