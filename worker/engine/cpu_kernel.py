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


@numba.njit(nogil=True, cache=True)
def _measure(b_raw, u_raw, b_val, u_val, by_table, shift, lut, nan_bin, chosen, cols,
             bins, refined, ulp, mask, col_flags):
    """Fold one piece into `bins` (curve bin counts), `refined` (of those, above the
    bin's tolerance), `ulp`, `mask` and `col_flags`.

    b_val/u_val are the values (float32) of b_raw/u_raw, or (`by_table`) tables indexed by them.
    Everything is compared in float64, where every delta is exact, so `lut` (the
    tolerance of each curve bin, +inf for none) and `chosen` are the tolerances
    themselves. Two histograms indexed by the bin alone, rather than one indexed by
    (bin, refine), keep each increment's address independent of the comparison.
    Returns (nan, delta_sq, base_sq, max_abs, rows_touched).
    """
    n = b_raw.shape[0]
    mag = (np.int64(1) << shift) - 1
    nan = 0
    unchanged = 0
    delta_sq = 0.0
    base_sq = 0.0
    max_abs = 0.0
    rows_touched = 0
    # Rows of a matrix (whole pieces are whole rows), or one long row for other tensors.
    width = cols if cols > 0 else n
    rows = n // width if width else 0
    for row in range(rows):
        row_hit = 0
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
            if bv != bv or uv != uv:  # NaN on either side: changed at every tolerance
                nan += 1
                bins[nan_bin] += 1
                if bv == bv:
                    base_sq += bv * bv
                mask[i] = 1
                col_flags[j if cols > 0 else 0] = 1
                row_hit = 1
                continue
            base_sq += bv * bv
            d = uv - bv  # exact: float64 holds any difference of two float32 values
            ad = abs(d)
            # The float32 curve bin (exponent, 3 mantissa bits) read off the float64 bits.
            k = (np.float64(ad).view(np.int64) >> 49) - ((1023 - 127) << 3)
            k = min(max(k, 0), nan_bin)
            bins[k] += 1
            refined[k] += ad > lut[k]
            # ULP distance between the monotone keys of the sign-magnitude bit patterns.
            kb = (rb & mag) * (1 - 2 * ((rb >> shift) & 1))
            ku = (ru & mag) * (1 - 2 * ((ru >> shift) & 1))
            # ceil(log2 dist) = floor(log2(2 dist - 1)): the exponent of an exact float64.
            dist = abs(ku - kb)
            ulp[(np.float64(2 * dist - 1).view(np.int64) >> 52) - 1023] += 1
            delta_sq += d * d
            max_abs = max(max_abs, ad)
            c = ad > chosen
            mask[i] = c
            col_flags[j if cols > 0 else 0] |= c
            row_hit |= c
        if row_hit and cols > 0:
            rows_touched += 1
    bins[0] += unchanged
    return nan, delta_sq, base_sq, max_abs, rows_touched


def measure_cpu(base: torch.Tensor, tuned: torch.Tensor, dtype: torch.dtype, cols: int | None,
                lut: np.ndarray, chosen: float, ulp_len: int):
    """Run the fused loop on CPU tensors already in `dtype`; numpy outputs and scalars."""
    n = base.numel()
    nbins = lut.shape[0]
    if dtype == torch.float32:
        b_raw = base.view(torch.int32).numpy().view(np.uint32)
        u_raw = tuned.view(torch.int32).numpy().view(np.uint32)
        b_val, u_val = base.numpy(), tuned.numpy()
        shift = 31
    else:
        raw, sign = _RAW[dtype]
        shift = sign.bit_length() - 1
        view = torch.int16 if raw == np.uint16 else torch.uint8
        b_raw = base.view(view).numpy().view(raw)
        u_raw = tuned.view(view).numpy().view(raw)
        b_val = u_val = _table(dtype)
    bins = np.zeros(nbins, np.int64)
    refined = np.zeros(nbins, np.int64)
    ulp = np.zeros(ulp_len, np.int64)
    mask = np.zeros(n, np.uint8)
    col_flags = np.zeros(cols or 1, np.uint8)
    out = _measure(b_raw, u_raw, b_val, u_val, dtype != torch.float32, shift, lut, nbins - 1, chosen, cols or 0,
                   bins, refined, ulp, mask, col_flags)
    curve = np.empty(2 * nbins, np.int64)  # (bin, refine bit) pairs, as the torch path counts them
    curve[0::2] = bins - refined
    curve[1::2] = refined
    return curve, ulp, mask.view(np.bool_), col_flags.view(np.bool_), out
