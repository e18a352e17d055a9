"""Reading a finished result under concurrent readers: p50, p95 and req/s, and where the time goes.

    .venv/bin/python bench/api_load.py                       # 1 and 50 readers, 5 s each, default settings
    .venv/bin/python bench/api_load.py --readers 1 10 50 --seconds 10 --web-workers 1
    .venv/bin/python bench/api_load.py --cache-bytes 0       # the read cache off, for comparison
    git archive OLD | tar -x -C /tmp/old && .venv/bin/python bench/api_load.py --repo /tmp/old   # an older version

Starts the real service (`subnetscope serve`, embedded Redis and a worker, in a temporary
data directory), submits the demo analysis (local:demo/base -> local:demo/rl_a) and waits
for it, then for each reader count runs a client in its own process: N asyncio tasks, one
keep-alive HTTP/1.1 connection each, reading GET /api/analyses/<id> back to back for
--seconds. A minimal client on raw sockets, so the client spends as little CPU as it can
(on a small machine it shares the cores with the server).

Three kinds of read, one row each:
  gzip      Accept-Encoding: gzip, as a browser asks; the body comes compressed
  identity  the whole body uncompressed
  304       If-None-Match with the ETag: revalidation, no body

Where the time goes: every response carries `Server-Timing: app;dur=<ms>` (the request
inside the app: routing, the cache check in Redis, the handler); the client sees that
plus the wait for a process to pick the connection up (the event loop busy with others),
HTTP parsing and the network. The CPU seconds of the server processes and of the client
over each run tell whether the machine's cores, not the service, are the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("gzip", "identity", "304")


# --- the client (its own process) ------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers, length


async def _reader(host: str, port: int, request: bytes, stop_at: float, out: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            status, headers, length = await _read_response(reader)
            elapsed = time.perf_counter() - started
            server = headers.get("server-timing", "")
            dur = float(server.split("dur=", 1)[1].split(",")[0]) / 1000 if "dur=" in server else None
            out.append((elapsed, dur, status, length))
    finally:
        writer.close()


async def _client(url: str, path: str, readers: int, seconds: float, headers: dict[str, str]) -> list:
    host, port = url.split("//", 1)[1].split(":")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    request = "\r\n".join(lines).encode()
    out: list = []
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(_reader(host, int(port), request, stop_at, out) for _ in range(readers)))
    return out


def client_main(args) -> None:
    headers = json.loads(args.headers)
    started, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    results = asyncio.run(_client(args.url, args.path, args.client_readers, args.seconds, headers))
    wall, cpu1 = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    json.dump({"results": results, "wall": wall, "cpu": cpu}, sys.stdout)


# --- the service ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0):
    import httpx

    return httpx.get(url, timeout=timeout)


def start_service(data_dir: Path, port: int, env_extra: dict[str, str], log_path: Path,
                  repo: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBNETSCOPE_") and k not in ("REDIS_URL",)}
    env.update({"SUBNETSCOPE_DATA_DIR": str(data_dir), "SUBNETSCOPE_PORT": str(port), "SUBNETSCOPE_DEVICE": "cpu",
                "SUBNETSCOPE_DEMO_TRAINING": "off", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env_extra})
    if repo is not None:  # another version's code, with this virtualenv's packages
        env["PYTHONPATH"] = str(repo)
        cmd, cwd = [sys.executable, "-m", "app.cli.main", "serve"], repo
    else:
        script = Path(sys.executable).parent / "subnetscope"
        cmd = [str(script), "serve"] if script.exists() else [sys.executable, "-m", "app.cli.main", "serve"]
        cwd = ROOT
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            r = _get(f"{base}/api/health", 2)
            if r.status_code == 200 and r.json()["workers"] >= 1:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    sys.exit(f"serve was not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")


def server_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds of the web processes (serve and its uvicorn children; not Redis or the RQ worker)."""
    import psutil

    total = 0.0
    try:
        parent = psutil.Process(proc.pid)
        family = [parent] + [p for p in parent.children() if "multiprocessing" in " ".join(p.cmdline())
                             and "resource_tracker" not in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return 0.0
    for p in family:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_client(base: str, path: str, readers: int, seconds: float, headers: dict) -> dict:
    cmd = [sys.executable, __file__, "--client", "--url", base, "--path", path, "--client-readers", str(readers),
           "--seconds", str(seconds), "--headers", json.dumps(headers)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        sys.exit(f"client failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readers", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--seconds", type=float, default=5.0, help="per row")
    ap.add_argument("--web-workers", type=int, help="SUBNETSCOPE_WEB_WORKERS (default: the setting's, min(4, cores))")
    ap.add_argument("--cache-bytes", type=int, help="SUBNETSCOPE_READ_CACHE_BYTES (0: the read cache off)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--repo", type=Path, help="serve this checkout's code instead (e.g. an older commit, to compare)")
    # the client process
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--client-readers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--headers", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args)

    sys.path.insert(0, str(ROOT))
    from app.core.settings import cores

    env = {}
    if args.web_workers:
        env["SUBNETSCOPE_WEB_WORKERS"] = str(args.web_workers)
    if args.cache_bytes is not None:
        env["SUBNETSCOPE_READ_CACHE_BYTES"] = str(args.cache_bytes)
    tmp = Path(tempfile.mkdtemp(prefix="subnetscope-api-load-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / "serve.log"
    proc = start_service(tmp / "data", port, env, log_path, args.repo)
    try:
        wait_ready(base, proc, log_path)
        import httpx

        r = httpx.post(f"{base}/api/analyses", json={"base": "local:demo/base", "tuned": "local:demo/rl_a"}, timeout=120)
        r.raise_for_status()
        aid = r.json()["id"]
        deadline = time.monotonic() + 300
        while (body := httpx.get(f"{base}/api/analyses/{aid}", timeout=30).json())["status"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                sys.exit("the demo analysis did not finish in 300 s")
            time.sleep(0.2)
        if body["status"] != "done":
            sys.exit(f"the demo analysis failed: {body['error']}")
        path = f"/api/analyses/{aid}"
        plain = httpx.get(base + path, headers={"Accept-Encoding": "identity"}, timeout=30)
        etag = plain.headers.get("etag")
        web = len([p for p in __import__("psutil").Process(proc.pid).children()
                   if "multiprocessing" in " ".join(p.cmdline())
                   and "resource_tracker" not in " ".join(p.cmdline())]) or 1
        print(f"service: {web} web process(es), {cores()} cores, read cache "
              f"{env.get('SUBNETSCOPE_READ_CACHE_BYTES', 'default')} bytes; result {path}: "
              f"{len(plain.content)} bytes ({len(body['result']['tensors'])} tensors)")
        for warm in (1, 8):  # every web process has the result cached, every connection path is warm
            run_client(base, path, warm, 1.0, {"Accept-Encoding": "gzip"})

        rows = []
        for readers in args.readers:
            for mode in args.modes:
                headers = {"Accept-Encoding": "gzip" if mode != "identity" else "identity"}
                if mode == "304" and etag:
                    headers["If-None-Match"] = etag
                cpu0 = server_cpu(proc)
                out = run_client(base, path, readers, args.seconds, headers)
                server_cpu_s = server_cpu(proc) - cpu0
                results = out["results"]
                lat = [r[0] * 1000 for r in results]
                srv = [r[1] * 1000 for r in results if r[1] is not None]
                statuses = sorted({r[2] for r in results})
                rows.append({
                    "readers": readers, "mode": mode, "requests": len(results), "statuses": statuses,
                    "bytes": results[0][3] if results else 0, "req_s": len(results) / out["wall"],
                    "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "max_ms": max(lat),
                    "server_p50_ms": pct(srv, 50) if srv else None, "server_p95_ms": pct(srv, 95) if srv else None,
                    "server_cpu_s": server_cpu_s, "client_cpu_s": out["cpu"], "wall_s": out["wall"],
                })
        print_table(rows)
        if args.json:
            args.json.write_text(json.dumps({"web_processes": web, "cores": cores(), "rows": rows}, indent=1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(rows: list[dict]) -> None:
    head = (f"{'readers':>7} {'read':>8} {'status':>6} {'bytes':>7} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'srv p50':>8} {'srv p95':>8} {'srv CPU':>8} {'cli CPU':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['readers']:>7} {r['mode']:>8} {'/'.join(map(str, r['statuses'])):>6} {r['bytes']:>7} "
              f"{r['req_s']:>7.0f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['server_p50_ms'] or 0:>8.2f} "
              f"{r['server_p95_ms'] or 0:>8.2f} {r['server_cpu_s'] / r['wall_s']:>7.2f}c "
              f"{r['client_cpu_s'] / r['wall_s']:>7.2f}c")
    print("srv p50/p95: Server-Timing (time inside the app); p50/p95: what the client saw, per request.\n"
          "srv/cli CPU: cores busy on average in the web processes / the client process during the row.")


if __name__ == "__main__":
    main()
