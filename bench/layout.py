"""Checkpoint layout helpers that import nothing heavy (the raw-read process must not load torch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def shard_files(ckpt_dir: Path) -> list[Path]:
    index = json.loads((Path(ckpt_dir) / "model.safetensors.index.json").read_text())
    return [Path(ckpt_dir) / f for f in sorted(set(index["weight_map"].values()))]


def layer_of(name: str) -> int | None:
    """Layer index as docs/METRICS.md parses it; None outside the layers."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None
