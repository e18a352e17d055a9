"""Delta in float32 for the SVD phase (bins.rank_delta), one loop over a 16-bit piece.

The torch expression it replaces (widen tuned, subtract base, check finiteness, mend) took four
passes over the piece and 7.7 k page faults per 2^21 bf16 elements: 18-20 ms a piece, against
4.4 here. A bf16 pattern widens to float32 exactly by moving its bits up 16 places, an fp16 one
through a 65536-entry table (256 KiB, in L2); the subtraction is the same correctly rounded
float32 operation as torch's, so the rows hold the same values (a zero's sign aside: equal
values give +0 here).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

FLOAT32_MAX = np.float32(np.finfo(np.float32).max)


@functools.lru_cache(maxsize=None)
def widening_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of every bit pattern of a 16-bit float format."""
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).float().numpy()


@numba.njit(nogil=True, cache=True, inline="always")
def _mended(x, y):
    """x - y in float32 as bins.rank_delta takes it: equal values 0, NaN 0, infinities +-float32 max."""
    d = np.float32(x - y)
    if x == y or d != d:
        return np.float32(0.0)
    if not np.isfinite(d):
        return FLOAT32_MAX if d > 0 else -FLOAT32_MAX
    return d


@numba.njit(nogil=True, cache=True)
def rank_delta_bf16(b, t, out):
    """out = float32(t) - float32(b) of bf16 bit patterns (uint16)."""
    for i in range(b.shape[0]):
        x = np.uint32(np.uint32(t[i]) << 16).view(np.float32)
        y = np.uint32(np.uint32(b[i]) << 16).view(np.float32)
        out[i] = _mended(x, y)


@numba.njit(nogil=True, cache=True)
def rank_delta_table(b, t, table, out):
    """out = table[t] - table[b] of 16-bit patterns (uint16) through `widening_table`."""
    for i in range(b.shape[0]):
        out[i] = _mended(table[t[i]], table[b[i]])
