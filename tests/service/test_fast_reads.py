"""Finished results are served from memory: ETag and 304, gzip when asked, several web processes."""

from __future__ import annotations

import gzip
import time

import httpx
import psutil
import pytest
from service_helpers import done, submit
from support.polling import wait_status

from app.core.settings import cores

pytestmark = pytest.mark.timeout(300)


def _etag_headers(r: httpx.Response) -> None:
    assert r.headers["etag"].startswith('"') and r.headers["etag"].endswith('"'), r.headers
    assert "Accept-Encoding" in r.headers["vary"]
    assert r.headers["server-timing"].startswith("app;dur=")


def test_finished_analysis_has_an_etag_and_answers_304(svc):
    body = done(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=6.1e-6)
    path = f"/api/analyses/{body['id']}"
    plain = {"Accept-Encoding": "identity"}
    first = svc.client.get(path, headers=plain)
    assert first.status_code == 200 and first.json() == body
    _etag_headers(first)
    second = svc.client.get(path, headers=plain)
    assert second.headers["etag"] == first.headers["etag"]  # the same bytes, whichever web process answers
    assert second.content == first.content

    not_modified = svc.client.get(path, headers={**plain, "If-None-Match": first.headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == first.headers["etag"]
    # Weak comparison, lists, and the gzip representation's tag all revalidate too.
    for tag in (f'W/{first.headers["etag"]}', f'"nope", {first.headers["etag"]}'):
        assert svc.client.get(path, headers={**plain, "If-None-Match": tag}).status_code == 304
    assert svc.client.get(path, headers={**plain, "If-None-Match": '"something-else"'}).status_code == 200


def test_large_bodies_are_gzipped_for_clients_that_accept_it(svc):
    body = done(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=6.2e-6)
    path = f"/api/analyses/{body['id']}"
    with httpx.Client(base_url=svc.base_url, timeout=30) as raw:
        plain = raw.get(path, headers={"Accept-Encoding": "identity"})
        with raw.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as zipped:
            compressed = b"".join(zipped.iter_raw())
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(compressed) == plain.content
    assert len(compressed) < len(plain.content) / 2, (len(compressed), len(plain.content))
    # Two representations, two strong tags; either revalidates the resource.
    assert zipped.headers["etag"] != plain.headers["etag"] and zipped.headers["etag"].endswith('-gzip"')
    again = svc.client.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304


def test_tensors_and_csv_are_cached_with_etags(svc):
    body = done(svc.client, svc.demo("base"), svc.demo("sft"), tolerance=6.3e-6)
    for params, kind in (({}, "application/json"), ({"format": "csv"}, "text/csv")):
        r = svc.client.get(f"/api/analyses/{body['id']}/tensors", params=params)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        _etag_headers(r)
        if kind == "application/json":
            assert r.json()["tensors"] == body["result"]["tensors"] and r.json()["partial"] is False
        else:
            assert r.headers["content-disposition"].startswith("attachment")
        again = svc.client.get(f"/api/analyses/{body['id']}/tensors", params=params,
                               headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304


def test_unfinished_analysis_is_never_cached(svc):
    """A queued read has no ETag, and once done the same URL gives the finished body, not the queued one."""
    svc.stop_worker()
    try:
        r = submit(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=6.4e-6)
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        for _ in range(3):  # every web process has had a chance to see it queued
            queued = svc.client.get(f"/api/analyses/{aid}")
            assert queued.json()["status"] == "queued" and "etag" not in queued.headers
    finally:
        svc.start_worker()
    final = wait_status(svc.client, aid)
    assert final["status"] == "done" and final["result"] is not None
    r = svc.client.get(f"/api/analyses/{aid}")
    assert r.json()["status"] == "done" and "etag" in r.headers


def test_finished_overlap_has_an_etag(svc):
    a = done(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=6.5e-6)
    b = done(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=6.5e-6)
    oid = svc.client.post("/api/overlaps", json={"analyses": [a["id"], b["id"]]}).json()["id"]
    deadline = time.monotonic() + 120
    while (r := svc.client.get(f"/api/overlaps/{oid}")).json()["status"] not in ("done", "failed"):
        assert "etag" not in r.headers
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert r.json()["status"] == "done" and r.json()["result"]["analyses"]
    _etag_headers(r)
    assert svc.client.get(f"/api/overlaps/{oid}", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_serve_runs_several_web_processes_where_cores_allow(svc):
    """SUBNETSCOPE_WEB_WORKERS defaults to min(4, cores); each is a spawned uvicorn process on the one port,
    and the dashboard answers from every one of them."""
    expected = min(4, cores())
    children = [p for p in psutil.Process(svc.web.pid).children() if "multiprocessing" in " ".join(p.cmdline())
                and "resource_tracker" not in " ".join(p.cmdline())]
    assert len(children) == (expected if expected > 1 else 0), [p.cmdline() for p in children]
    # Dash pages and a callback answer whichever process a connection lands on.
    for _ in range(2 * max(expected, 1)):
        with httpx.Client(base_url=svc.base_url, timeout=30) as fresh:  # a new connection each time
            page = fresh.get("/")
            assert page.status_code == 200 and "_dash-config" in page.text
            layout = fresh.get("/_dash-layout")
            assert layout.status_code == 200 and layout.json()


def test_read_cache_is_bounded_by_bytes_and_encodes_once():
    """The LRU drops the least recently read first, never holds more than its bytes, and skips a body
    bigger than the whole cache; gzip is made once, only for bodies worth it, and tags match either form."""
    from app.web.reads import LRU, accepts_gzip, encode, matches

    small, big = encode("x" * 100, "application/json", ("done", "1")), encode(b"y" * 5000, "text/csv", ("done", "2"))
    assert small.gz is None and big.gz is not None and gzip.decompress(big.gz) == big.body
    cache = LRU(max_bytes=3 * big.size)
    for key in "abc":
        cache.put(key, big)
    assert cache.get("a") is big  # a is now the most recently read
    cache.put("d", big)
    assert cache.get("b") is None and cache.get("a") is big and len(cache) == 3 and cache.bytes <= cache.max_bytes
    cache.put("huge", encode(b"z" * (4 * big.size), "text/plain", ("done", "3")))
    assert cache.get("huge") is None and cache.bytes <= cache.max_bytes
    assert accepts_gzip("br, gzip;q=0.8") and not accepts_gzip("gzip;q=0") and not accepts_gzip("identity")
    assert matches(f'W/"{big.tag}-gzip"', big.tag) and matches("*", big.tag) and not matches('"other"', big.tag)
