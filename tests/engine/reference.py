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


# --- precision and magnitude (metrics.md, "Precision and magnitude", "Similarity") ---------

# (mantissa bits, smallest normal exponent) of each compared dtype
FORMAT = {torch.bfloat16: (7, -126), torch.float16: (10, -14), torch.float32: (23, -126),
          torch.float8_e4m3fn: (3, -6), torch.float8_e5m2: (2, -14)}


def magnitude_bin(x: float, dtype: torch.dtype) -> int:
    """0 zero, 1 subnormal (of dtype), 2..255 floor(log2|x|) + 128, 256 inf or NaN."""
    if math.isnan(x) or math.isinf(x):
        return 256
    if x == 0:
        return 0
    _, emin = FORMAT[dtype]
    e = math.frexp(abs(x))[1] - 1  # floor(log2 |x|), exact
    return 1 if e < emin else e + 128


def ratio_bucket(delta: float, base: float, dtype: torch.dtype) -> int:
    """Bucket k of |delta| / spacing(base): ratios in (2^(k-1), 2^k], bucket 0 for ratios <= 1."""
    mbits, emin = FORMAT[dtype]
    e = math.frexp(abs(base))[1] - 1 if base != 0 else emin
    ratio = abs(delta) / 2.0 ** (max(e, emin) - mbits)  # exact: a power-of-two scaling
    m, ex = math.frexp(ratio)
    ceil_log2 = ex - 1 if m == 0.5 else ex
    return min(max(ceil_log2, 0), 32)


def precision_stats(base: torch.Tensor, tuned: torch.Tensor, tolerances) -> dict:
    """Per element, in Python: compared and changed by magnitude bin, changed by (bin, ratio bucket),
    the bf16 / fp16 storage counterfactuals and the cosine similarity (math.fsum of exact products)."""
    dtype = base.dtype
    b = base.double().flatten().tolist()
    u = tuned.double().flatten().tolist()
    d = delta64(base, tuned).flatten().tolist()
    compared: dict[int, int] = {}
    changed = {repr(float(t)): {} for t in tolerances}
    ratio: dict[tuple[int, int], int] = {}
    for bv, dv in zip(b, d):
        k = magnitude_bin(bv, dtype)
        compared[k] = compared.get(k, 0) + 1
        for t in tolerances:
            if math.isnan(dv) or abs(dv) > t:
                changed[repr(float(t))][k] = changed[repr(float(t))].get(k, 0) + 1
        if dv != 0 and not math.isnan(dv):
            key = (k, ratio_bucket(dv, bv, dtype))
            ratio[key] = ratio.get(key, 0) + 1
    counterfactual = {}
    for name, narrow in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        if dtype == torch.float32 or (dtype == torch.float16 and narrow == torch.bfloat16):
            rb, ru = base.to(narrow), tuned.to(narrow)
            counterfactual[name] = {repr(float(t)): int(changed_mask(rb, ru, t).sum()) for t in tolerances}
    ok = list(zip(b, u))
    dot = math.fsum(0.0 if math.isnan(x) or math.isnan(y) else x * y for x, y in ok)
    bsq = math.fsum(0.0 if math.isnan(x) else x * x for x, _ in ok)
    usq = math.fsum(0.0 if math.isnan(y) else y * y for _, y in ok)
    return {
        "compared": compared,
        "changed": changed,
        "ratio": ratio,
        "counterfactual": counterfactual,
        "cosine": _finite_or_none(dot / math.sqrt(bsq * usq)) if bsq > 0 and usq > 0 else None,
    }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # inf or NaN weights: no cosine
