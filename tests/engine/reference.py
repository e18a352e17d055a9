"""Brute-force float64 reference for every per-tensor number in docs/METRICS.md.

Deliberately naive: whole tensors, float64, one comparison per tolerance, Python
integers for bit keys. It shares no code with the engine's kernel.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Compared dtypes and their widths; anything else (F64, integers) is unsupported.
NARROW = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 1, torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}


def compare_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype | None:
    """docs/METRICS.md: same dtype as is; equal width (bf16 vs fp16) in float32; else the narrower.

    None: not compared (F64 or an integer dtype on either side).
    """
    if a not in NARROW or b not in NARROW:
        return None
    if a == b:
        return a
    if NARROW[a] == NARROW[b]:
        return torch.float32
    return a if NARROW[a] < NARROW[b] else b


def as_compared(base: torch.Tensor, tuned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides cast to their compare dtype (round to nearest even), as the engine must compare them."""
    dtype = compare_dtype(base.dtype, tuned.dtype)
    assert dtype is not None, (base.dtype, tuned.dtype)
    return base.to(dtype), tuned.to(dtype)


def delta64(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    b, u = base.double(), tuned.double()
    d = u - b
    return torch.where(u == b, torch.zeros_like(d), d)  # equal infinities are unchanged


def changed_mask(base, tuned, t: float) -> torch.Tensor:
    d = delta64(base, tuned)
    return torch.isnan(d) | (d.abs() > t)


def _keys(x: torch.Tensor) -> np.ndarray:
    width = NARROW[x.dtype]
    raw = x.contiguous().view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[width]).numpy().astype(np.int64)
    mag = raw & ((1 << (8 * width - 1)) - 1)
    return np.where(raw < 0, -mag, mag)


def ulp_histogram(base, tuned, buckets: int = 33) -> list[int]:
    d = delta64(base, tuned)
    valid = (~torch.isnan(d)).numpy()
    dist = np.abs(_keys(tuned) - _keys(base))[valid]
    dist = dist[dist > 0]
    counts = [0] * buckets
    for v in dist.tolist():
        counts[(int(v) - 1).bit_length()] += 1
    return counts


def tensor_stats(base: torch.Tensor, tuned: torch.Tensor, tolerances, chosen: float, want_rank=False) -> dict:
    d = delta64(base, tuned)
    finite = torch.where(torch.isnan(d), 0.0, d)  # NaN adds nothing; an infinite delta stays infinite
    mask = changed_mask(base, tuned, chosen)
    out = {
        "numel": base.numel(),
        "changed": {repr(float(t)): int(changed_mask(base, tuned, t).sum()) for t in tolerances},
        "nan": int(torch.isnan(d).sum()),
        "delta_fro": math.sqrt(float((finite**2).sum())),
        "base_fro": math.sqrt(float((torch.where(torch.isnan(base.double()), 0.0, base.double()) ** 2).sum())),
        "max_abs_delta": float(finite.abs().max()) if base.numel() else 0.0,
        "ulp": ulp_histogram(base, tuned),
        "mask": mask,
    }
    if base.dim() == 2 and base.numel():
        out["row_coverage"] = float(mask.any(dim=1).double().mean())
        out["col_coverage"] = float(mask.any(dim=0).double().mean())
    if want_rank and base.dim() == 2:
        out["rank"] = int(torch.linalg.matrix_rank(torch.nan_to_num(d).float()))
    return out
