"""Fixtures of the service tests that stand up less than a whole service (tests/support/service.py)."""

from __future__ import annotations

import pytest

from app.cli.embedded import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server of the module's own, for the tests of what we keep in Redis."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()
