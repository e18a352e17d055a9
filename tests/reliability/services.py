"""Service processes the reliability tests need beyond the shared `svc` (tests/support/service.py).

Everything started here is a real process on loopback, like `svc`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil
from support.polling import wait_for
from support.service import cli


def run_holder(svc, analysis_id: str) -> psutil.Process | None:
    """The process running `analysis_id` now: its attempt key holds "host:pid:job" (worker/jobrun.py).

    Under RQ that is the work horse, a child of the worker (whose other child is RQ's
    scheduler, which must not be mistaken for it).
    """
    owner = svc.redis.get(f"subnetscope:analysis:{analysis_id}:alive")
    if owner is None or svc.worker is None:
        return None
    pid = int(owner.decode().split(":")[1])
    try:
        horse = psutil.Process(pid)
        family = {p.pid for p in psutil.Process(svc.worker.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return None
    return horse if pid in family else None


def worker_is_present(svc, name: str) -> bool:
    return bool(svc.redis.exists(f"subnetscope:worker:{name}"))


# --- a worker whose artifacts directory for one analysis is a tiny, full filesystem ----


def tmpfs_mount_works() -> bool:
    """Can this machine give a process a private mount namespace with a tmpfs in it?"""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        [*_unshare(), "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=16k subnetscope-probe \"$d\""],
        capture_output=True, timeout=30,
    )
    return probe.returncode == 0


def _unshare() -> list[str]:
    # As root a private mount namespace is enough; otherwise a user namespace maps us to root in it.
    return ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]


def start_worker_with_small_disk(svc, directory: Path, size: str) -> str:
    """Start the service's worker with a `size` tmpfs over `directory`, seen by that worker alone.

    The mount lives in the worker's private mount namespace (`unshare --mount`), so it
    needs no cleanup and nothing else on the machine sees it; writes past `size` fail
    in the kernel with ENOSPC exactly as on a full disk. Returns the worker's name.
    """
    if svc.worker is not None and svc.worker.poll() is None:
        raise RuntimeError("stop the service's worker first")
    directory.mkdir(parents=True, exist_ok=True)
    name = f"test-worker-{len(svc.worker_names) + 1}-small-disk"
    svc.worker_names.append(name)
    script = 'mount -t tmpfs -o "size=$1" subnetscope-full "$2" && shift 2 && exec "$@"'
    command = [*_unshare(), "sh", "-c", script, "sh", size, str(directory), *cli("worker", "--name", name)]
    with open(svc.logs_dir / f"{name}.log", "ab") as log:
        svc.worker = subprocess.Popen(command, env=svc.env, cwd=svc.root, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: worker_is_present(svc, name) or svc.worker.poll() is not None, 60, f"worker {name}")
    assert svc.worker.poll() is None, svc.log_text(f"{name}.log")[-3000:]
    return name
