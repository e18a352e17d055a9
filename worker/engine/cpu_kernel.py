"""The CPU fast path of `Kernel.measure`: one fused loop per piece, compiled by numba.

A chain of torch ops reads each piece ~35 times; this loop reads it once and keeps
its two small histograms in L1, which on a CPU is the difference between compute-
bound and read-bound. It computes exactly what the torch path computes (the same
tests hold both to the float64 reference); CUDA keeps the torch path.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

# Raw-bit integer dtype and sign bit for each supported compare dtype.
_RAW = {
    torch.bfloat16: (np.uint16, 0x8000),
    torch.float16: (np.uint16, 0x8000),
    torch.float8_e4m3fn: (np.uint8, 0x80),
    torch.float8_e5m2: (np.uint8, 0x80),
}
SUPPORTED = frozenset(_RAW) | {torch.float32}

_TABLES: dict[torch.dtype, np.ndarray] = {}


def _table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of every bit pattern of a 16- or 8-bit float (all exact in float32)."""
    if dtype not in _TABLES:
        raw, _ = _RAW[dtype]
        bits = np.arange(np.iinfo(raw).max + 1, dtype=np.int64).astype(raw)
        view_as = torch.int16 if raw == np.uint16 else torch.uint8
        _TABLES[dtype] = torch.from_numpy(bits.view(np.int16) if raw == np.uint16 else bits).view(view_as).view(dtype).float().numpy()
    return _TABLES[dtype]


@numba.njit(nogil=True, cache=True, inline="always")
def _ulp_bucket(rb, ru, sign, mag):
    kb = -(rb & mag) if rb & sign else rb & mag
    ku = -(ru & mag) if ru & sign else ru & mag
    x = abs(ku - kb) - 1  # ceil(log2 d) = bit_length(d - 1)
    bucket = 0
    while x:
        bucket += 1
        x >>= 1
    return bucket


@numba.njit(nogil=True, cache=True)
def _measure(b_raw, u_raw, b_val, u_val, sign, mag, lut, nan_bin, chosen, cols,
             curve, ulp, mask, col_flags):
    """Fold one piece into `curve` (bin*2 + refine), `ulp`, `mask`, `col_flags`.

    b_val/u_val are the values (float32) of b_raw/u_raw, or tables indexed by them.
    Everything is compared in float64, where every delta is exact, so `lut` (the
    tolerance of each curve bin, +inf for none) and `chosen` are the tolerances themselves.
    Returns (nan, chosen_changed, delta_sq, base_sq, max_abs, rows_touched).
    """
    n = b_raw.shape[0]
    by_table = b_val.shape[0] != n
    scratch64 = np.empty(1, np.float64)
    bits64 = scratch64.view(np.int64)
    nan = 0
    chosen_changed = 0
    unchanged = 0
    delta_sq = 0.0
    base_sq = 0.0
    max_abs = 0.0
    rows_touched = 0
    # Rows of a matrix (whole pieces are whole rows), or one long row for other tensors.
    width = cols if cols > 0 else n
    rows = n // width if width else 0
    for row in range(rows):
        row_hit = False
        for j in range(width):
            i = row * width + j
            rb = np.int64(b_raw[i])
            ru = np.int64(u_raw[i])
            if by_table:
                bv = np.float64(b_val[rb])
                uv = np.float64(u_val[ru])
            else:
                bv = np.float64(b_val[i])
                uv = np.float64(u_val[i])
            if uv == bv:  # also -0 == +0 and equal infinities
                unchanged += 1
                base_sq += bv * bv
                continue
            if bv != bv or uv != uv:
                nan += 1
                curve[nan_bin * 2] += 1
                if bv == bv:
                    base_sq += bv * bv
                changed = True
            else:
                base_sq += bv * bv
                d = uv - bv  # exact: float64 holds any difference of two float32 values
                ad = abs(d)
                scratch64[0] = ad
                # The float32 curve bin (exponent, 3 mantissa bits) read off the float64 bits.
                k = (bits64[0] >> 49) - ((1023 - 127) << 3)
                k = 0 if k < 0 else (nan_bin if k > nan_bin else k)
                curve[k * 2 + (1 if ad > lut[k] else 0)] += 1
                ulp[_ulp_bucket(rb, ru, sign, mag)] += 1
                delta_sq += d * d
                if ad > max_abs:
                    max_abs = ad
                changed = ad > chosen
            if changed:
                mask[i] = 1
                chosen_changed += 1
                col_flags[j if cols > 0 else 0] = 1
                row_hit = True
        if row_hit and cols > 0:
            rows_touched += 1
    curve[0] += unchanged
    return nan, chosen_changed, delta_sq, base_sq, max_abs, rows_touched


def measure_cpu(base: torch.Tensor, tuned: torch.Tensor, dtype: torch.dtype, cols: int | None,
                lut: np.ndarray, nan_bin: int, chosen: float, curve_len: int, ulp_len: int):
    """Run the fused loop on CPU tensors already in `dtype`; numpy outputs and scalars."""
    n = base.numel()
    if dtype == torch.float32:
        b_raw = base.view(torch.int32).numpy().view(np.uint32)
        u_raw = tuned.view(torch.int32).numpy().view(np.uint32)
        b_val, u_val = base.numpy(), tuned.numpy()
        sign = 0x80000000
    else:
        raw, sign = _RAW[dtype]
        view = torch.int16 if raw == np.uint16 else torch.uint8
        b_raw = base.view(view).numpy().view(raw)
        u_raw = tuned.view(view).numpy().view(raw)
        b_val = u_val = _table(dtype)
    curve = np.zeros(curve_len, np.int64)
    ulp = np.zeros(ulp_len, np.int64)
    mask = np.zeros(n, np.uint8)
    col_flags = np.zeros(cols or 1, np.uint8)
    out = _measure(b_raw, u_raw, b_val, u_val, sign, sign - 1, lut, nan_bin, chosen, cols or 0,
                   curve, ulp, mask, col_flags)
    return curve, ulp, mask.view(np.bool_), col_flags.view(np.bool_), out
