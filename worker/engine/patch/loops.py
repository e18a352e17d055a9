"""The codec's per-element loops, fused with numba (one pass instead of numpy's seven).

Same streams as codec.py's numpy path: a little-endian bitmask of changed positions, one
byte per change (min(zigzag key delta, 255)), and the full zigzag codes of the changes whose
byte is 255. Widths 1, 2 and 4 bytes (8-byte dtypes take the numpy path); arithmetic is in
int64 on values masked to the width, so nothing overflows.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def encode(base, tuned, bits, mask, small, esc):
    """Fill mask/small/esc; returns (changes, escapes)."""
    full = (1 << bits) - 1
    sign = 1 << (bits - 1)
    k = 0
    e = 0
    for i in range(base.size):
        b = np.int64(base[i]) & full
        t = np.int64(tuned[i]) & full
        if b != t:
            mask[i >> 3] |= np.uint8(1 << (i & 7))
            kb = (~b & full) if b & sign else (b | sign)
            kt = (~t & full) if t & sign else (t | sign)
            d = (kt - kb) & full
            s = d - (1 << bits) if d & sign else d
            zz = 2 * s if s >= 0 else -2 * s - 1
            if zz >= 255:
                small[k] = 255
                esc[e] = zz
                e += 1
            else:
                small[k] = zz
            k += 1
    return k, e


@numba.njit(nogil=True, cache=True)
def decode(base, bits, mask, small, esc, out):
    """Write the tuned values into `out` (a copy of base); returns (changes, escapes) consumed."""
    full = (1 << bits) - 1
    sign = 1 << (bits - 1)
    k = 0
    e = 0
    for i in range(base.size):
        if mask[i >> 3] & (1 << (i & 7)):
            if k >= small.size:
                return -1, -1  # more changes marked than stored: a corrupted patch, never read past
            zz = np.int64(small[k])
            if zz == 255:
                if e >= esc.size:
                    return -1, -1
                zz = np.int64(esc[e])
                e += 1
            k += 1
            s = (zz >> 1) if (zz & 1) == 0 else -(zz >> 1) - 1
            b = np.int64(base[i]) & full
            kb = (~b & full) if b & sign else (b | sign)
            kt = (kb + s) & full
            out[i] = (kt ^ sign) if kt & sign else (~kt & full)
    return k, e
