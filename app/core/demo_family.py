"""The trained demo family's names and its build status file, shared by `serve` (which builds it,
app/cli/demo_training.py) and the web app (which shows "training the demo: 40 %")."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MODES = ("full", "quick", "off")
STATUS_FILE = ".trained-status.json"
LOCK_FILE = ".trained.lock"
TRAINED = "trained"
# What the trained family holds (worker.demo.trained.TRAINED_NAMES, without importing torch).
TRAINED_NAMES = ("trained/base", "trained/sft", "trained/rl", "trained/sft_run", "trained/rl_run",
                 "trained/base_fp32", "trained/sft_fp32", "trained/rl_fp32")
PAIRS = (("trained/base", "trained/sft", "trained · SFT"), ("trained/base", "trained/rl", "trained · RL"))
RUNS = ("trained/sft_run", "trained/rl_run")
STALE_SECONDS = 60.0  # a "training" status this old was left by a build that died


def present(demo: Path) -> bool:
    return all((Path(demo) / n).is_dir() for n in TRAINED_NAMES)


def write_status(demo: Path, **fields) -> None:
    fields["updated"] = time.time()
    tmp = demo / f"{STATUS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, demo / STATUS_FILE)


def status(demo: Path) -> dict:
    """{"state": "ready" | "training" | "failed" | "absent", "percent": float | None, "stage", "message"}."""
    demo = Path(demo)
    if present(demo):
        return {"state": "ready", "percent": 100.0, "stage": "done", "message": None}
    try:
        s = json.loads((demo / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {"state": "absent", "percent": None, "stage": None, "message": None}
    state = s.get("state")
    if state == "training" and time.time() - float(s.get("updated", 0)) > STALE_SECONDS:
        state = "absent"  # its process died; the next `serve` starts over
    return {"state": state if state in ("training", "failed") else "absent",
            "percent": s.get("percent"), "stage": s.get("stage"), "message": s.get("message")}
