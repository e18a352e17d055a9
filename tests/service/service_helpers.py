"""Helpers for the service tests: follow analyses, compare with the CLI, write checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

VENV_BIN = Path(sys.executable).parent
# Fields that describe how a run went, not what it found.
TIMING_FIELDS = {"seconds", "bytes_read", "device"}


def root_conftest():
    """tests/conftest.py as a module (`import conftest` may find another directory's conftest, and
    pytest's `conftest` entry in sys.modules is replaced when tests/engine/conftest.py is collected too)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "conftest.py"
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == path:
            return module
    name = "subnetscope_tests_root_conftest"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def submit(client: httpx.Client, base: str, tuned: str, **fields) -> httpx.Response:
    return client.post("/api/analyses", json={"base": base, "tuned": tuned, **fields})


def wait_for(client: httpx.Client, path: str, statuses=("done", "failed"), timeout: float = 120.0,
             interval: float = 0.05) -> dict:
    """Poll GET `path` (an analysis, overlap or training run) until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        time.sleep(interval)
    raise AssertionError(f"{path} not {statuses} after {timeout}s: {body.get('status')} "
                         f"{body.get('progress')} {body.get('error')}")


def wait_status(client: httpx.Client, analysis_id: str, statuses=("done", "failed"), timeout: float = 120.0,
                interval: float = 0.05) -> dict:
    return wait_for(client, f"/api/analyses/{analysis_id}", statuses, timeout, interval)


def done(client: httpx.Client, base: str, tuned: str, **fields) -> dict:
    r = submit(client, base, tuned, **fields)
    assert r.status_code in (200, 202), r.text
    body = wait_status(client, r.json()["id"])
    assert body["status"] == "done", body["error"]
    return body


def wait_idle(svc, timeout: float = 120.0) -> None:
    """No analysis queued or running: counters read afterwards belong to the test alone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.redis.scard("subnetscope:running") == 0 and svc.redis.llen("rq:queue:subnetscope") == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the service did not become idle")


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


def assert_same_numbers(a, b, path: str = "result") -> None:
    """Equal structure; floats equal to 1e-12 relative (JSON round trips are exact, this is slack only)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or (math.isnan(a) and math.isnan(b)), \
            f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


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
