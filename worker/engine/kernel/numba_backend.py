"""The numba backend of `Kernel.measure` (the CPU default): a fused pass per piece.

A chain of torch ops reads each piece ~35 times; this pass reads it once, in chunks
of `CHUNK` elements that stay in L1, and keeps its small histograms there. It computes
exactly what the torch path computes (the same tests hold both to the float64
reference); CUDA keeps the torch path.

Most elements of a finetune are bit-identical to the base (80-99 %), and a branch
per element ("changed?") costs more than the work when the changes are scattered
(mispredictions). So each chunk goes through branch-free loops, most of them SIMD:

1. `_scan`: one read of the chunk: the base's squared norm (NaN adds nothing), its NaN
   count, and a compare of the raw bits with a count; a chunk without a difference ends here;
2. `_compact`: the differing positions and their raw patterns into small buffers: AVX-512
   compress stores, 16 elements each, where the CPU has them (`_COMPRESS`), else a loop
   that writes every element and moves its cursor by the mark (and skips blocks of 16
   equal elements when few differ);
3. `_values`, `classify` (numba_classify.py): for those only, the exact float64 delta,
   its curve bin, ULP bucket (bit length of the distance - 1) and chosen-tolerance flag,
   and the sums;
4. two histogram increments per differing element (curve (bin, refine bit), ULP), then
   rows, columns and the mask for the elements changed at the chosen tolerance.

The precision view (numba_precision.py) adds an exponent histogram of every base element to
step 1, its per-element terms to step 3 (numba_classify.py) and one increment to step 4;
`view=False` (the bench's "no view") compiles none of it into the loops.

Equal bits are equal values, except NaN (changed at every tolerance, even against the
same NaN): a chunk whose base holds a NaN marks its NaN positions too (`_mark_nan`).
Different bits with equal values (-0 against +0) are found equal in step 3 and go to
spare histogram slots that are dropped.

Measured on the bench pair (bench/README.md): 1.2 ns per element pair on one core with
the data in cache (3.6 ns for the per-element loop this replaced), ~1.5-1.8 ns streaming
from page cache.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch

from worker.engine.kernel import numba_precision as precision
from worker.engine.kernel.avx512 import compress16 as _compress16
from worker.engine.kernel.avx512 import has_compress as _has_compress
from worker.engine.kernel.bins import (
    FORMATS,
    MAG_BINS,
    NO_RATIO,
    ULP_BUCKETS,
    PieceStats,
    PrecisionCounts,
    Thresholds,
    class_table,
    rank_delta,
)
from worker.engine.kernel.numba_classify import classify, classify_view

# Raw-bit integer dtype and sign bit for each supported compare dtype.
_RAW = {
    torch.bfloat16: (np.uint16, 0x8000),
    torch.float16: (np.uint16, 0x8000),
    torch.float8_e4m3fn: (np.uint8, 0x80),
    torch.float8_e5m2: (np.uint8, 0x80),
}
SUPPORTED = frozenset(_RAW) | {torch.float32}

# How a raw pattern becomes its value: a table (fp16, fp8), bf16's upper half of a float32, float32 itself.
_BY_TABLE, _BF16, _F32 = 0, 1, 2
# Elements per chunk: the chunk's raw words and work buffers stay in L1/L2, and the loops run long
# enough to amortise their set-up (the exponent window's, the compress loops'). Measured on the
# bench pair, in one process: the pass with the precision view 0.93 s at 1024, 0.85 s at 2048,
# 0.85 s at 4096 (without the view 0.77, 0.75, 0.64 s: larger chunks only help the plain loop).
CHUNK = 2048

_TABLES: dict[torch.dtype, np.ndarray] = {}
_DUMMY_TABLE = np.zeros(1, np.float32)


_COMPRESS = _has_compress()


def _table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of every bit pattern of a 16- or 8-bit float (all exact in float32)."""
    if dtype not in _TABLES:
        raw, _ = _RAW[dtype]
        bits = np.arange(np.iinfo(raw).max + 1, dtype=np.int64).astype(raw)
        view_as = torch.int16 if raw == np.uint16 else torch.uint8
        _TABLES[dtype] = torch.from_numpy(bits.view(np.int16) if raw == np.uint16 else bits).view(view_as).view(dtype).float().numpy()
    return _TABLES[dtype]


# Every loop below runs over range(len) of arrays or slices: numba then drops its
# negative-index wraparound and LLVM vectorises the loops that have no stores into
# data-dependent addresses. Float sums are reassociated (vectorised): each term is
# exact, only the order of the float64 additions changes.
_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True, inline="always")
def _value(r, table, kind):
    """float64 value (exact) of the raw pattern r."""
    if kind == _BF16:
        return np.float64(np.uint32(np.uint32(r) << np.uint32(16)).view(np.float32))
    if kind == _F32:
        return np.float64(np.uint32(r).view(np.float32))
    return np.float64(table[r])


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def _scan(b, u, ne, table, kind):
    """One read of the chunk: (sum of v^2 over the base's non-NaN values v, the base's NaN
    count, count of ne[i] = the bits of b[i] and u[i] differ, the base's zeros)."""
    s = 0.0
    nans = 0
    count = 0
    zeros = 0
    if kind == _BF16:
        for i in range(b.shape[0]):
            r = np.uint32(b[i])
            v = np.float64(np.uint32(r << np.uint32(16)).view(np.float32))
            bad = (r & np.uint32(0x7FFF)) > np.uint32(0x7F80)
            s += 0.0 if bad else v * v
            nans += bad
            zeros += (r & np.uint32(0x7FFF)) == 0
            d = b[i] != u[i]
            ne[i] = d
            count += d
    elif kind == _F32:
        for i in range(b.shape[0]):
            r = np.uint32(b[i])
            v = np.float64(r.view(np.float32))
            bad = (r & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
            s += 0.0 if bad else v * v
            nans += bad
            zeros += (r & np.uint32(0x7FFFFFFF)) == 0
            d = b[i] != u[i]
            ne[i] = d
            count += d
    else:
        for i in range(b.shape[0]):
            v = np.float64(table[b[i]])
            bad = v != v
            s += 0.0 if bad else v * v
            nans += bad
            zeros += v == 0.0
            d = b[i] != u[i]
            ne[i] = d
            count += d
    return s, nans, count, zeros


@numba.njit(nogil=True, cache=True)
def _mark_nan(b, ne, table, kind):
    """Also mark where the base is NaN (changed even against the same NaN); the new count."""
    count = 0
    for i in range(b.shape[0]):
        bv = _value(b[i], table, kind)
        d = ne[i] | (bv != bv)
        ne[i] = d
        count += d
    return count


@numba.njit(nogil=True, cache=True)
def _compact(b, u, ne, count, idx, cb, cu, compress):
    """The marked positions (ascending) and their raw patterns into idx, cb, cu; their count.

    Branch-free: every element is written and the cursor moves by its mark. When few are
    marked (an RL update), blocks of 16 unmarked elements are skipped with one branch,
    which is then predictable.
    """
    n = b.shape[0]
    m = 0
    if compress:  # AVX-512: 16 elements per compress store, no branch, no per-element cursor
        full = n // 16 * 16
        for o in range(0, full, 16):
            _compress16(idx, m, None, ne, o)
            _compress16(cb, m, b, ne, o)
            m += _compress16(cu, m, u, ne, o)
        for q in range(full, n):
            idx[m] = q
            cb[m] = b[q]
            cu[m] = u[q]
            m += ne[q]
        return m
    if 64 * count >= n:  # over ~1.5 % marked, most blocks hold one: skipping them costs more than it saves
        for k in range(n):
            idx[m] = k
            cb[m] = b[k]
            cu[m] = u[k]
            m += ne[k]
        return m
    blocks = n // 16
    for o in range(blocks):
        blk = False
        for k in range(16):
            blk |= ne[16 * o + k]
        if blk:
            for k in range(16):
                q = 16 * o + k
                idx[m] = q
                cb[m] = b[q]
                cu[m] = u[q]
                m += ne[q]
    for q in range(16 * blocks, n):
        idx[m] = q
        cb[m] = b[q]
        cu[m] = u[q]
        m += ne[q]
    return m


@numba.njit(nogil=True, cache=True)
def _values(cb, cu, m, vb, vu, table, kind):
    """float32 values (exact) of the first m raw patterns; one loop per kind, so that the
    loop that uses them has no branch on the kind (it would keep it from SIMD)."""
    if kind == _BF16:
        for p in range(m):
            vb[p] = np.uint32(np.uint32(cb[p]) << np.uint32(16)).view(np.float32)
            vu[p] = np.uint32(np.uint32(cu[p]) << np.uint32(16)).view(np.float32)
    elif kind == _F32:
        for p in range(m):
            vb[p] = np.uint32(cb[p]).view(np.float32)
            vu[p] = np.uint32(cu[p]).view(np.float32)
    else:
        for p in range(m):
            vb[p] = table[cb[p]]
            vu[p] = table[cu[p]]


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def _measure(b_raw, u_raw, table, kind, shift, lut, nan_bin, chosen, cols, curve, ulp, mask, want_mask, col_flags,
             compress, view, mbits, emin, keys, bias, nan_in_top, compared, cls, ncls, joint_counts, magcls,
             magratio, cf_kinds, cf):
    """Fold one piece into `curve` (2 nbins + 1 counts: (bin, refine bit) pairs and a spare
    slot), `ulp` (buckets and a spare slot), `mask` (when `want_mask`) and `col_flags`.
    `lut` is the tolerance of each curve bin, +inf for none and for the spare bin.
    The precision view (numba_precision.py), when `view`: `keys` counts every base element by its exponent
    bits, `compared` the same per magnitude bin at the end; `joint_counts` (all zero, and left
    so) the differing ones by (magnitude bin, ratio bucket, tolerance class `cls` of (bin, refine
    bit)), one increment each, folded at the end into `magcls` (bin, class) and `magratio` (bin,
    bucket), the two small tables the view reads and the pass adds up; `cf` their classes in the
    storage counterfactuals (`cf_kinds` of them).
    Returns (nan, delta_sq, base_sq, max_abs, rows_touched, chosen_changed, sum b u, sum b^2,
    sum u^2 over the differing elements).
    """
    n = b_raw.shape[0]
    nan = 0
    differ = 0  # elements whose values differ (NaN included); the rest are unchanged: bin 0
    chosen_changed = 0
    delta_sq = 0.0
    base_sq = 0.0
    max_bits = np.int64(0)
    rows_touched = 0
    # Rows of a matrix (whole pieces are whole rows), or one long row for other tensors.
    width = cols if cols > 0 else n
    row_start = 0
    row_end = width
    row_hit = False
    ne = np.empty(CHUNK, np.bool_)
    idx = np.empty(CHUNK, np.int32)
    cb = np.empty(CHUNK, b_raw.dtype)
    cu = np.empty(CHUNK, u_raw.dtype)
    bins = np.empty(CHUNK, np.int64)
    ads = np.empty(CHUNK, np.float64)
    ub = np.empty(CHUNK, np.int64)
    fl = np.empty(CHUNK, np.bool_)
    vb = np.empty(CHUNK, np.float32)
    vu = np.empty(CHUNK, np.float32)
    joint = np.empty(CHUNK, np.int64)
    kkeys = np.empty(CHUNK, np.uint8)  # the exponent histogram's scratch (key_histogram_window)
    ktail = np.empty(CHUNK, np.uint8)
    kcounts = np.empty(8, np.int64)
    zeros = 0
    nans_base = 0
    bu = 0.0
    bb = 0.0
    uu = 0.0
    for start in range(0, n, CHUNK):
        b = b_raw[start:start + CHUNK]
        u = u_raw[start:start + CHUNK]
        s, base_nans, count, z = _scan(b, u, ne, table, kind)
        base_sq += s
        zeros += z
        nans_base += base_nans
        if view and compress:
            precision.key_histogram_window(b, keys, mbits, keys.shape[1] - 1, kkeys, ktail, kcounts)
        elif view:
            precision.key_histogram(b, keys, mbits, keys.shape[1] - 1)
        if base_nans:
            count = _mark_nan(b, ne, table, kind)
        if count == 0:
            continue
        m = _compact(b, u, ne, count, idx, cb, cu, compress)
        _values(cb, cu, m, vb, vu, table, kind)
        if view:
            dsq, mb, nn, df, cc, pbu, pbb, puu = classify_view(cb, cu, vb, vu, m, shift, nan_bin, chosen, bins, ads,
                                                                ub, fl, mbits, emin, joint)
        else:
            dsq, mb, nn, df, cc, pbu, pbb, puu = classify(cb, cu, vb, vu, m, shift, nan_bin, chosen, bins, ads, ub, fl)
        delta_sq += dsq
        max_bits = mb if mb > max_bits else max_bits
        nan += nn
        differ += df
        chosen_changed += cc
        bu += pbu
        bb += pbb
        uu += puu
        for p in range(m):
            k = bins[p]
            r = 2 * k + (not ads[p] <= lut[k])  # NaN is refined (above +inf), as on the torch path
            curve[r] += 1
            ulp[ub[p]] += 1
            if view:
                joint_counts[joint[p] * ncls + cls[r]] += 1  # (magnitude bin, ratio bucket, tolerance class)
        if cf_kinds:
            precision.counterfactual(vb, vu, m, cf_kinds, lut, cls, nan_bin, cf, ncls)
        if cc == 0:
            continue
        if cols > 0:
            for p in range(m):
                i = start + idx[p]
                while i >= row_end:
                    rows_touched += row_hit
                    row_hit = False
                    row_start = row_end
                    row_end += width
                f = fl[p]
                col_flags[i - row_start] |= np.uint8(f)
                row_hit |= f
                if want_mask:
                    mask[i] = f
        else:
            col_flags[0] = 1
            if want_mask:
                for p in range(m):
                    mask[start + idx[p]] = fl[p]
    if cols > 0:
        rows_touched += row_hit
    curve[0] += n - differ
    if view:
        precision.fold_keys(keys, bias, zeros, nans_base, nan_in_top, compared)
        precision.fold_joint(joint_counts, compared, ncls, magcls, magratio)
    return nan, delta_sq, base_sq, np.int64(max_bits).view(np.float64), rows_touched, chosen_changed, bu, bb, uu


def _with_spare(lut: np.ndarray) -> np.ndarray:
    """`lut` with a +inf for the spare bin (cached by identity: a kernel keeps its table)."""
    cached = _SPARE.get(id(lut))
    if cached is None or cached[0] is not lut:
        if len(_SPARE) >= 8:  # one per live kernel; a long-lived worker makes many
            _SPARE.clear()
        cached = (lut, np.append(lut, np.inf))
        _SPARE[id(lut)] = cached
    return cached[1]


_SPARE: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_THREAD = threading.local()


def _joint_scratch(ncls: int) -> np.ndarray:
    """This thread's all-zero (magnitude bin, ratio bucket, class) table: allocated once, since a
    piece touches a few of its rows and the kernel zeroes those again (pieces of one pass run on
    several threads, one at a time on each)."""
    size = MAG_BINS * (NO_RATIO + 1) * ncls
    table = getattr(_THREAD, "joint", None)
    if table is None or table.shape[0] < size:
        table = _THREAD.joint = np.zeros(size, np.uint32)
    return table


def measure_cpu(base: torch.Tensor, tuned: torch.Tensor, dtype: torch.dtype, cols: int | None,
                lut: np.ndarray, chosen: float, want_mask: bool = True, cls: np.ndarray | None = None,
                cf_kinds: int = 0, view: bool = True):
    """Run the fused pass on CPU tensors already in `dtype`; numpy outputs and scalars.

    Returns (curve, ulp, mask or None, col_flags, (nan, delta_sq, base_sq, max_abs,
    rows_touched, chosen_changed), precision): curve holds (bin, refine bit) pairs, as the torch
    path counts them; precision is (compared per magnitude bin, the differing elements per
    (bin, tolerance class) and per (bin, ratio bucket), counterfactual classes, dot, tuned_sq),
    or None without the `view`.
    """
    n = base.numel()
    nbins = lut.shape[0]
    if dtype == torch.float32:
        b_raw = base.view(torch.int32).numpy().view(np.uint32)
        u_raw = tuned.view(torch.int32).numpy().view(np.uint32)
        table, kind, shift = _DUMMY_TABLE, _F32, 31
    else:
        raw, sign = _RAW[dtype]
        shift = sign.bit_length() - 1
        as_int = torch.int16 if raw == np.uint16 else torch.uint8
        b_raw = base.view(as_int).numpy().view(raw)
        u_raw = tuned.view(as_int).numpy().view(raw)
        table, kind = (_DUMMY_TABLE, _BF16) if dtype == torch.bfloat16 else (_table(dtype), _BY_TABLE)
    if cls is None:
        cls = np.zeros(2 * nbins + 2, np.int64)
    ncls = int(cls.max()) + 1
    mbits, emin, bias, width = FORMATS[dtype]
    curve = np.zeros(2 * nbins + 1, np.int64)
    ulp = np.zeros(ULP_BUCKETS + 1, np.int64)
    mask = np.zeros(n if want_mask else 1, np.uint8)
    col_flags = np.zeros(cols or 1, np.uint8)
    size = 1 if not view else None  # without the view its tables are never touched: no allocations
    keys = np.zeros((8, size or 1 << (width - 1 - mbits)), np.uint32)  # a piece has fewer than 2^32 elements
    compared = np.zeros(size or MAG_BINS, np.int64)
    magcls = np.zeros(size or MAG_BINS * ncls, np.uint32)
    magratio = np.zeros(size or MAG_BINS * (NO_RATIO + 1), np.uint32)
    cf = np.zeros(size or 2 * ncls, np.int64)
    out = _measure(b_raw, u_raw, table, kind, shift, _with_spare(lut), nbins - 1, chosen, cols or 0,
                   curve, ulp, mask, want_mask, col_flags, _COMPRESS, view, mbits, emin, keys,
                   bias, dtype == torch.float8_e4m3fn, compared, cls, ncls, _joint_scratch(ncls if view else 0), magcls, magratio,
                   cf_kinds if view else 0, cf)
    nan, delta_sq, base_sq, max_abs, rows_touched, chosen_changed, bu, bb, uu = out
    # Equal bits are equal values: b u = b^2 = u^2 there, so the differing elements' sums correct base_sq.
    equal_sq = base_sq - bb
    precision = (compared, magcls.reshape(MAG_BINS, ncls), magratio.reshape(MAG_BINS, NO_RATIO + 1),
                 cf.reshape(2, ncls)[:cf_kinds], equal_sq + bu, equal_sq + uu) if view else None
    return (curve[:-1], ulp[:-1], mask.view(np.bool_) if want_mask else None, col_flags.view(np.bool_),
            (nan, delta_sq, base_sq, max_abs, rows_touched, chosen_changed), precision)


class NumbaBackend:
    """Per-piece statistics with the fused loop; CPU tensors of the dtypes in SUPPORTED."""

    def __init__(self, thresholds: Thresholds, chosen: float, view: bool = True):
        self._lut = thresholds.values
        self._cls = class_table(thresholds)
        self.chosen = float(chosen)
        self.view = view

    def measure(self, base, tuned, compare_dtype, cols, want_rank, keep_masks=True, cf_kinds=0) -> PieceStats:
        curve, ulp, mask, col_flags, out, prec = measure_cpu(
            base.contiguous(), tuned.contiguous(), compare_dtype, cols, self._lut, self.chosen, keep_masks,
            self._cls, cf_kinds, self.view)
        nan, delta_sq, base_sq, max_abs, rows_touched, chosen_changed = out
        stats = PieceStats(
            curve=torch.from_numpy(curve), ulp=torch.from_numpy(ulp),
            mask=torch.from_numpy(mask) if mask is not None else None,
            numel=base.numel(), nan=nan, delta_sq=delta_sq, base_sq=base_sq, max_abs=max_abs,
            rows_touched=rows_touched, cols_touched=torch.from_numpy(col_flags) if cols else None,
            chosen_changed=chosen_changed,
            precision=PrecisionCounts(*prec) if prec else None,
        )
        if want_rank and cols:
            stats.delta_rows = rank_delta(base, tuned).view(-1, cols)
        return stats
