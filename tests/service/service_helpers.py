"""Helpers for the service tests: submit, compare with the CLI, write checkpoints (polling and the
service itself: tests/support/)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file
from support.numbers import assert_same_numbers  # noqa: F401  (re-exported for the service tests)
from support.polling import wait_status
from support.service import VENV_BIN

# Fields that describe how a run went, not what it found.
TIMING_FIELDS = {"seconds", "bytes_read", "device"}


def submit(client: httpx.Client, base: str, tuned: str, **fields) -> httpx.Response:
    return client.post("/api/analyses", json={"base": base, "tuned": tuned, **fields})


def done(client: httpx.Client, base: str, tuned: str, **fields) -> dict:
    r = submit(client, base, tuned, **fields)
    assert r.status_code in (200, 202), r.text
    body = wait_status(client, r.json()["id"])
    assert body["status"] == "done", body["error"]
    return body


def cli_result(base_dir: Path, tuned_dir: Path, tmp: Path, **options) -> dict:
    out = tmp / "cli.json"
    args = [str(VENV_BIN / "subnetscope"), "analyze", str(base_dir), str(tuned_dir), "--json", str(out),
            "--quiet", "--device", "cpu"]
    for k, v in options.items():
        args += [f"--{k}", str(v)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def comparable(result: dict) -> dict:
    """The result without timing fields and without how each side was named (path vs local: id).

    Non-finite numbers are not JSON; the API sends them as null, so they compare as None.
    """
    result = _finite(json.loads(json.dumps(result)))
    for side in ("base", "tuned"):
        result[side] = {"kind": result[side]["kind"], "sha": result[side]["sha"]}
    for k in TIMING_FIELDS:
        result["summary"].pop(k, None)
    return result


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_many_tensor_pair(root: Path, *, tensors: int = 256, rows: int = 128, cols: int = 256,
                           seed: int = 7) -> tuple[Path, Path]:
    """A bf16 pair with many tensors, ~1 element in 4 changed: long enough to watch and to interrupt."""
    gen = torch.Generator().manual_seed(seed)
    modules = ("q_proj", "k_proj", "v_proj", "o_proj")
    base, tuned = {}, {}
    for i in range(tensors):
        name = f"model.layers.{i // len(modules)}.self_attn.{modules[i % len(modules)]}.weight"
        w = torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
        mask = torch.rand(rows, cols, generator=gen) < 0.25
        base[name] = w
        tuned[name] = torch.where(mask, (w.float() * 1.01 + 1e-3).to(torch.bfloat16), w)
    dirs = []
    for label, state in (("base", base), ("tuned", tuned)):
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        save_file(state, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                   "hidden_size": cols}))
        dirs.append(d)
    return dirs[0], dirs[1]
