"""Step 3 of the numba backend's pass (numba_backend.py): each marked element, classified.

For the elements whose bits differ only, in float64 where every delta is exact: the curve bin,
|Delta|, ULP bucket and chosen-tolerance flag of each, and their sums. `classify_view` adds the
precision view's terms of each element (numba_precision.element) in the same loop, which already
holds the values; without the view, `classify` is compiled without them (a branch on the view
inside one loop kept it from SIMD).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from worker.engine.kernel import numba_precision as precision
from worker.engine.kernel.bins import NO_ULP, WIDE_BIN_OFFSET

# Float sums are reassociated (vectorised): each term is exact, only the order of the float64
# additions changes.
_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True, inline="always")
def _marked(cb, cu, vb, vu, p, shift, nan_bin, chosen, bins, ads, ub, fl):
    """One marked element of `classify`: writes bins[p], ads[p], ub[p], fl[p]; returns (its float64
    values, |delta|, delta^2 (0 for equal or NaN), bits of |delta| (0 likewise), NaN, differs, chosen flag)."""
    rb = np.int64(cb[p])
    ru = np.int64(cu[p])
    bv = np.float64(vb[p])
    uv = np.float64(vu[p])
    d = uv - bv  # exact: float64 holds any difference of two float32 values
    ad = abs(d)
    eq = uv == bv
    isnan = d != d  # NaN on either side (equal infinities are equal, never here)
    ok = not (eq or isnan)
    bits = np.float64(ad).view(np.int64)
    # The float32 curve bin (exponent, 3 mantissa bits) read off the float64 bits.
    k = min(max((bits >> 49) - WIDE_BIN_OFFSET, 0), nan_bin)
    bins[p] = nan_bin + 1 if eq else k  # equal values: the spare bin
    ads[p] = ad
    # ULP distance of sign-magnitude patterns: |a - c| on one side of zero, a + c across it;
    # its bucket ceil(log2 dist) is the bit length of dist - 1 (dist >= 1 when the values differ).
    mag = (np.int64(1) << shift) - 1
    a = rb & mag
    c = ru & mag
    dist = abs(a - c) if ((rb ^ ru) >> shift) == 0 else a + c
    ub[p] = (64 - leading_zeros(np.uint64(dist - 1))) if ok else NO_ULP  # ULP buckets 0..32: distances up to 2^32
    f = (ad > chosen) | isnan
    fl[p] = f
    return bv, uv, ad, d * d if ok else 0.0, bits if ok else np.int64(0), isnan, not eq, f


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def classify(cb, cu, vb, vu, m, shift, nan_bin, chosen, bins, ads, ub, fl):
    """Per marked element: its curve bin, |delta|, ULP bucket and chosen flag.

    Everything is compared in float64, where every delta is exact, so `chosen` is the
    tolerance itself. NaN on either side: the top bin, no ULP bucket, changed at every
    tolerance. Equal values (-0 against +0): bin and bucket in the spare slots. (The
    refine bit needs a table look-up per bin, which would keep this loop from SIMD: the
    histogram loop does it.)
    Returns (delta_sq, bits of max |delta|, nan, values that differ, chosen changed).
    """
    delta_sq = 0.0
    max_bits = np.int64(0)
    nan = differ = chosen_changed = 0
    for p in range(m):
        _, _, _, dsq, mb, isnan, ne, f = _marked(cb, cu, vb, vu, p, shift, nan_bin, chosen, bins, ads, ub, fl)
        delta_sq += dsq
        max_bits = mb if mb > max_bits else max_bits
        nan += isnan
        differ += ne
        chosen_changed += f
    return delta_sq, max_bits, nan, differ, chosen_changed, 0.0, 0.0, 0.0


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def classify_view(cb, cu, vb, vu, m, shift, nan_bin, chosen, bins, ads, ub, fl, mbits, emin, joint):
    """`classify` with the precision view's terms (numba_precision.element) in the same loop: joint[p]
    the element's (magnitude bin, ratio bucket) cell, and the cosine's sums. Two loops rather than a
    branch on the view in one: the branch kept it from SIMD (4 % of the pass).
    Returns `classify`'s, then sum b u, sum b^2, sum u^2."""
    delta_sq = bu = bb = uu = 0.0
    max_bits = np.int64(0)
    nan = differ = chosen_changed = 0
    for p in range(m):
        bv, uv, ad, dsq, mb, isnan, ne, f = _marked(cb, cu, vb, vu, p, shift, nan_bin, chosen, bins, ads, ub, fl)
        delta_sq += dsq
        max_bits = mb if mb > max_bits else max_bits
        nan += isnan
        differ += ne
        chosen_changed += f
        cell, b2, u2, bu1 = precision.element(bv, uv, ad, mbits, emin)
        joint[p] = cell
        bb += b2
        uu += u2
        bu += bu1
    return delta_sq, max_bits, nan, differ, chosen_changed, bu, bb, uu
