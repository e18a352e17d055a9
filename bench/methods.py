"""The measured methods that run in their own process: `python bench/methods.py METHOD BASE TUNED --json OUT`.

Each method runs in a fresh interpreter so that its peak RSS is its own; the
parent (throughput.py) times the whole process and samples its memory. The
methods also time their own work (without interpreter start and imports) and
write it to OUT.

- raw:   read every byte of both checkpoints' shards into one reused buffer.
- study: the study's script (Mukherjee et al. 2025, check_sparsity.py): load both
         full state dicts, delta per tensor in the checkpoint dtype, concatenate
         all deltas into one flat vector, one torch.isclose pass per tolerance;
         plus the per-layer breakdown of the same counts. Loading uses
         safetensors.torch.load_file instead of transformers' from_pretrained
         (not installed here; from_pretrained is no faster).
- exact: the reference counts, |tuned - base| > t in float64, tensor by tensor
         (not a contender: it checks ours and the study's numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layout import layer_of, shard_files  # noqa: E402

STUDY_TOLERANCES = [1e-5, 1e-6, 1e-7, 1e-8]


def vm_hwm() -> int:
    """Peak resident set size of this process so far, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def raw_read(base: Path, tuned: Path) -> dict:
    files = shard_files(base) + shard_files(tuned)
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return {"seconds": time.perf_counter() - t0, "bytes": total}


def study(base: Path, tuned: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    sft: dict = {}
    rl: dict = {}
    for path in shard_files(base):
        sft.update(load_file(path))
    for path in shard_files(tuned):
        rl.update(load_file(path))
    t_load = time.perf_counter()

    names, sizes, all_deltas = [], [], []
    nonzero: dict[str, float] = {}
    with torch.no_grad():
        for name in sft:
            delta = rl[name] - sft[name]
            nonzero[name] = (delta != 0).sum().item() / delta.numel()
            names.append(name)
            sizes.append(delta.numel())
            all_deltas.append(delta.view(-1))
        flat = torch.cat(all_deltas, dim=0)
        zeros = torch.zeros_like(flat)
        numel = flat.numel()
        changed: dict[str, int] = {}
        layers: dict[str, dict[str, int]] = {}
        for tol in STUDY_TOLERANCES:
            close = torch.isclose(flat, zeros, atol=tol)
            changed[repr(tol)] = numel - int(close.sum())
            # Per-layer breakdown of the same pass: the flat vector is split back
            # into its tensors (the script keeps param_sizes for that).
            per_tensor = [int(c.sum()) for c in close.split(sizes)]
            for name, size, kept in zip(names, sizes, per_tensor):
                key = str(layer_of(name))
                layers.setdefault(key, {}).setdefault(repr(tol), 0)
                layers[key][repr(tol)] += size - kept
            del close
    t_end = time.perf_counter()
    return {
        "seconds": t_end - t0,
        "load_seconds": t_load - t0,
        "compute_seconds": t_end - t_load,
        "numel": numel,
        "changed": changed,
        "layers": layers,
    }


def exact(base: Path, tuned: Path) -> dict:
    """Reference counts in docs/METRICS.md's definition, |tuned - base| > t, in float64.

    float64 is exact for 16-bit inputs (a float32 comparison would round t itself),
    and each tensor is read on its own, so this check needs little memory. It tells a
    disagreement caused by the study script's bf16 rounding apart from an engine bug.
    """
    import torch
    from safetensors import safe_open

    t0 = time.perf_counter()
    changed = {repr(t): 0 for t in STUDY_TOLERANCES}
    layers: dict[str, dict[str, int]] = {}
    numel = 0
    for fb, ft in zip(shard_files(base), shard_files(tuned)):
        with safe_open(fb, "pt") as sb, safe_open(ft, "pt") as st:
            for name in sb.keys():
                d = (st.get_tensor(name).double() - sb.get_tensor(name).double()).abs_()
                numel += d.numel()
                row = layers.setdefault(str(layer_of(name)), {repr(t): 0 for t in STUDY_TOLERANCES})
                for t in STUDY_TOLERANCES:
                    c = int(torch.count_nonzero(d > t))
                    changed[repr(t)] += c
                    row[repr(t)] += c
    return {"seconds": time.perf_counter() - t0, "numel": numel, "changed": changed, "layers": layers}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("method", choices=["raw", "study", "exact"])
    p.add_argument("base", type=Path)
    p.add_argument("tuned", type=Path)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()
    out = {"raw": raw_read, "study": study, "exact": exact}[a.method](a.base, a.tuned)
    out.setdefault("peak_rss_self", vm_hwm())
    a.json.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
