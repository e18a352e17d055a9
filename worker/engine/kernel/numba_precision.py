"""The precision view's loops of the numba backend (metrics.md, "Precision and magnitude").

Called from `numba_backend._measure`, chunk by chunk, inside the same single pass:

- `key_histogram`: every base element by the exponent bits of its raw pattern, the only work
  this view adds for the elements that did not change: one increment each, or, with AVX-512
  (`key_histogram_window`), the dense exponents 64 at a time and only the tail one by one;
  `fold_keys` turns it into compared elements per magnitude bin, once per piece;
- `element`: for the elements whose bits differ only (as the rest of the kernel), inlined
  into `numba_classify.classify_view`: the base's magnitude bin, the ratio bucket of
  |Delta| / spacing(base) and the float64 terms the cosine needs; the kernel counts each
  into one (bin, ratio bucket, tolerance class) table, and `fold_joint` turns that into the
  two tables the view reads;
- `counterfactual`: for pairs wider than bf16, the same elements rounded to bf16 (and to
  fp16 for fp32 pairs), round to nearest even, and their tolerance class.
"""

from __future__ import annotations

import numba
import numpy as np

from worker.engine.kernel.avx512 import window64
from worker.engine.kernel.bins import MAG_NONFINITE, MAG_OFFSET, MAG_SUBNORMAL, MAG_ZERO, NO_RATIO, WIDE_BIN_OFFSET

_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True)
def key_histogram(b, hist, shift, top):
    """hist[j, (b[i] >> shift) & top] += 1 over the chunk, j = i % 8 (b: raw unsigned patterns; hist
    uint32 [8, top + 1]). Eight sub-histograms: most weights share a few exponents, and increments
    of one counter in a row would wait on each other's stores."""
    s = np.uint32(shift)
    t = np.uint32(top)
    n = b.shape[0] // 8 * 8
    for i in range(0, n, 8):
        for j in range(8):
            hist[j, (np.uint32(b[i + j]) >> s) & t] += 1
    for i in range(n, b.shape[0]):
        hist[0, (np.uint32(b[i]) >> s) & t] += 1


@numba.njit(nogil=True, cache=True)
def key_histogram_window(b, hist, shift, top, keys, tail, counts):
    """`key_histogram` with AVX-512 (VBMI2): the same counts, into hist[0]. Weights crowd into
    the few exponents under the chunk's largest, so the eight from it down are counted 64 at a
    time by compares and popcounts (`avx512.window64`), and only the rest (the small weights'
    long tail, zeros) one at a time; the exponent fields are cut out by a SIMD loop first.
    keys, tail: uint8 scratch at least b's length; counts: int64[8]."""
    n = b.shape[0]
    s = np.uint32(shift)
    t = np.uint32(top)
    hi = np.uint8(0)
    for i in range(n):
        k = np.uint8((np.uint32(b[i]) >> s) & t)
        keys[i] = k
        hi = max(hi, k)
    lo = max(np.int64(hi) - 7, 0)
    counts[:] = 0
    full = n // 64 * 64
    m = 0
    for o in range(0, full, 64):
        m = window64(keys, o, lo, counts, tail, m)
    for w in range(8):
        if lo + w <= top:
            hist[0, lo + w] += np.uint32(counts[w])
    for i in range(m):
        hist[0, tail[i]] += 1
    for i in range(full, n):
        hist[0, keys[i]] += 1


@numba.njit(nogil=True, cache=True)
def fold_keys(keys, bias, zeros, nans, nan_in_top, out):
    """Compared elements per magnitude bin (out: MAG_BINS counts) from `key_histogram`'s counts per
    exponent, the count of zeros and of NaNs; `nan_in_top`: the format's NaN shares the top exponent
    with finite values (e4m3fn), which then counts as a normal exponent."""
    top = keys.shape[1] - 1
    per = np.zeros(top + 1, np.int64)
    for j in range(keys.shape[0]):
        for k in range(top + 1):
            per[k] += keys[j, k]
    out[MAG_ZERO] = zeros
    out[MAG_SUBNORMAL] = per[0] - zeros
    for e in range(1, top):
        out[e - bias + MAG_OFFSET] = per[e]
    if nan_in_top:
        out[top - bias + MAG_OFFSET] = per[top] - nans
        out[MAG_NONFINITE] = nans
    else:
        out[MAG_NONFINITE] = per[top]


@numba.njit(nogil=True, cache=True)
def fold_joint(joint, compared, ncls, classes, ratio):
    """Add the (magnitude bin, ratio bucket or NO_RATIO, tolerance class) counts of `joint` into
    classes (bin, class) and ratio (bin, bucket), and zero `joint` again. Only the bins that hold
    base elements (compared > 0) can hold counts: the rest of the table is never read. No branch
    on the counts: the loops run as SIMD over the few hundred cells of a bin."""
    width = (NO_RATIO + 1) * ncls
    for k in range(compared.shape[0]):
        if compared[k] == 0:
            continue
        cells = joint[k * width:(k + 1) * width]
        for q in range(NO_RATIO + 1):
            t = np.uint32(0)
            for c in range(ncls):
                v = cells[q * ncls + c]
                t += v
                classes[k * ncls + c] += v
            ratio[k * (NO_RATIO + 1) + q] += t
        cells[:] = 0


@numba.njit(nogil=True, cache=True, inline="always")
def element(bv, uv, ad, mbits, emin):
    """The precision view of one marked element (float64 values bv, uv, ad = |uv - bv|), inlined into
    the kernel's classify loop: (its magnitude bin x (NO_RATIO + 1) + the ratio bucket of
    |Delta| / spacing(base), NO_RATIO where the values are equal or NaN; b^2, u^2, b u with NaN
    terms 0). Every product is exact in float64; only the order of the additions differs."""
    nb = bv != bv
    nu = uv != uv
    eb = ((np.float64(abs(bv)).view(np.int64) >> 52) & 0x7FF) - 1023  # floor(log2 |b|) for normal values
    k = eb + MAG_OFFSET
    k = MAG_SUBNORMAL if eb < emin else k
    k = 0 if bv == 0.0 else k
    k = MAG_NONFINITE if eb == 1024 else k
    # ceil(log2 |Delta|) minus the exponent of the base's spacing 2^(max(e, emin) - mbits)
    bits = np.float64(ad).view(np.int64)
    up = (bits & 0xFFFFFFFFFFFFF) != 0
    c = ((bits >> 52) - 1023) + up - (max(eb, emin) - mbits)
    c = min(max(c, 0), 32)
    ok = not (uv == bv or nb or nu)
    joint = k * (NO_RATIO + 1) + (c if ok else NO_RATIO)
    return joint, 0.0 if nb else bv * bv, 0.0 if nu else uv * uv, 0.0 if (nb or nu) else bv * uv


@numba.njit(nogil=True, cache=True, inline="always")
def _round(v, mbits, emin, largest):
    """v (float64, a float32 value) rounded to a float with mbits mantissa bits and smallest normal
    exponent emin, to nearest even, overflowing to infinity above `largest`."""
    if v != v or v == 0.0 or abs(v) == np.inf:
        return v
    e = ((np.float64(abs(v)).view(np.int64) >> 52) & 0x7FF) - 1023
    q = np.float64(np.int64((max(e, emin) - mbits + 1023) << 52).view(np.float64))  # 2^(e - mbits), a normal float64
    y = np.rint(v / q) * q  # v / q is exact; rint rounds half to even
    if abs(y) > largest:
        return np.inf if v > 0 else -np.inf
    return y


@numba.njit(nogil=True, cache=True)
def counterfactual(vb, vu, m, kinds, lut, cls, nan_bin, out, ncls):
    """Tolerance classes of the m marked elements after rounding both sides to bf16 (kinds >= 1)
    and to fp16 (kinds == 2), counted into out[kind * ncls + class]."""
    for j in range(kinds):
        mbits, emin, largest = (7, -126, 3.3895313892515355e38) if j == 0 else (10, -14, 65504.0)
        for p in range(m):
            bv = _round(np.float64(vb[p]), mbits, emin, largest)
            uv = _round(np.float64(vu[p]), mbits, emin, largest)
            if uv == bv:  # equal values (equal infinities too): unchanged at every tolerance
                continue
            ad = abs(uv - bv)  # NaN when either is NaN: the top bin, changed at every tolerance
            bits = np.float64(ad).view(np.int64)
            k = min(max((bits >> 49) - WIDE_BIN_OFFSET, 0), nan_bin)
            out[j * ncls + cls[2 * k + (not ad <= lut[k])]] += 1
