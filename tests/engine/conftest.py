"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A clean huggingface_hub for loopback-Hub tests: no token, cache or offline flag leaks in
    from the machine running them, and retries back off in milliseconds."""
    from huggingface_hub import constants

    from worker.engine.checkpoints.hub import HubSource

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HubSource, "backoff_s", 0.01)
