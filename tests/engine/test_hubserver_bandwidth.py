"""The loopback Hub's per-connection bandwidth cap (bench/fanout.py relies on it)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from hubserver import HubServer


def test_each_connection_is_capped_on_its_own(tmp_path):
    repo = tmp_path / "org" / "blob"
    repo.mkdir(parents=True)
    data = bytes(range(256)) * 1600  # 409,600 bytes
    (repo / "model.safetensors").write_bytes(data)
    rate = 1_000_000
    with HubServer(tmp_path, bandwidth=rate) as hub:
        url = f"{hub.url}/org/blob/resolve/main/model.safetensors"

        def fetch(begin: int, end: int) -> tuple[bytes, float]:
            with httpx.Client(follow_redirects=True, timeout=30) as client:
                started = time.monotonic()
                body = client.get(url, headers={"Range": f"bytes={begin}-{end - 1}"}).content
                return body, time.monotonic() - started

        body, alone = fetch(0, len(data))
        assert body == data
        assert alone >= 0.9 * (len(data) - rate / 50) / rate  # ~0.4 s at 1 MB/s
        with ThreadPoolExecutor(2) as pool:
            halves = list(pool.map(lambda r: fetch(*r), [(0, len(data) // 2), (len(data) // 2, len(data))]))
        assert halves[0][0] + halves[1][0] == data
        # Two connections at once: each at the cap, so together about twice as fast as one.
        assert max(t for _, t in halves) < 0.8 * alone, (alone, [t for _, t in halves])
