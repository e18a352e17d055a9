"""The trained demo family, built in the background of `subnetscope serve`.

`serve` writes the synthetic demo family at once (a second) and then starts
`python -m app.cli.demo_training DEMO_DIR MODE` as a child process, so its first page
answers while the small Llama trains (worker/demo/trained.py, about a minute
on two cores). The child:

- takes an exclusive lock on `DEMO_DIR/.trained.lock` (a second `serve` on the same
  root leaves the build to the first), and does nothing when the family is present;
- trains into `DEMO_DIR/.trained-<pid>/` and renames its `trained/` into
  `DEMO_DIR/trained` when everything is written, so a reader sees all or nothing;
- keeps `DEMO_DIR/.trained-status.json` up to date (state, percent, stage), which
  `GET /api/demo` and the home page show ("training the demo: 40 %").

It dies with `serve` (SIGTERM from the kernel, Linux) and is terminated by it on a
clean stop; the next `serve` removes what was left and starts again.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.core.demo_family import (  # noqa: F401  (re-exported: the family's names, read by the web app too)
    LOCK_FILE,
    MODES,
    PAIRS,
    RUNS,
    STALE_SECONDS,
    STATUS_FILE,
    TRAINED,
    TRAINED_NAMES,
    present,
    status,
    write_status,
)

log = logging.getLogger(__name__)

def start(root: Path, mode: str, log_file: Path | None = None) -> subprocess.Popen | None:
    """Start the background build under `root/demo` unless it is off or already there."""
    demo = Path(root) / "demo"
    if mode == "off" or present(demo):
        return None
    if mode not in MODES:
        raise ValueError(f"demo training mode must be one of {MODES}, not {mode!r}")
    from app.cli.embedded import _preexec

    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli.demo_training", str(demo), mode],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_preexec(True))
    finally:
        if log_file:
            out.close()
    log.info("training the demo's trained family in the background (%s; pid %d)", mode, proc.pid)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def build(demo: Path, mode: str) -> int:
    """The child's work: train under a lock, rename into place, keep the status file current."""
    import fcntl

    demo = Path(demo)
    demo.mkdir(parents=True, exist_ok=True)
    with open(demo / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is training the demo family; leaving it to it")
            return 0
        if present(demo):
            return 0
        for stale in demo.glob(".trained-*"):  # left by a build that was killed
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        if (demo / TRAINED).exists():
            shutil.rmtree(demo / TRAINED)  # a partial family (never made by this module)
        tmp = demo / f".trained-{os.getpid()}"
        last = [-1.0, 0.0]

        def progress(fraction: float, stage: str) -> None:
            percent = round(100.0 * fraction, 1)
            now = time.monotonic()
            if percent >= 100.0 or (percent - last[0] >= 1.0) or now - last[1] > 5.0:
                last[:] = [percent, now]
                write_status(demo, state="training", percent=min(percent, 99.9), stage=stage, mode=mode)

        write_status(demo, state="training", percent=0.0, stage="starting", mode=mode)
        try:
            from worker.demo.trained import write_trained_demo

            write_trained_demo(tmp, quick=(mode == "quick"), progress=progress)
            os.rename(tmp / TRAINED, demo / TRAINED)
        except (KeyboardInterrupt, SystemExit):
            write_status(demo, state="stopped", percent=None, stage=None, mode=mode)
            raise
        except BaseException as exc:
            write_status(demo, state="failed", percent=None, stage=None, mode=mode,
                          message=f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write_status(demo, state="ready", percent=100.0, stage="done", mode=mode)
    log.info("trained demo family ready in %s", demo / TRAINED)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 2 or argv[1] not in MODES:
        print("usage: python -m app.cli.demo_training DEMO_DIR full|quick", file=sys.stderr)
        return 2
    try:
        os.nice(10)  # behind the web process and the workers
    except OSError:
        pass
    # SIGTERM (serve stopping, or dying: PR_SET_PDEATHSIG) unwinds, so the temp folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return build(Path(argv[0]), argv[1])


if __name__ == "__main__":
    sys.exit(main())
