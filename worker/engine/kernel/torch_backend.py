"""The torch backend of `Kernel.measure`: a handful of vectorised ops per piece, on any device.

CUDA runs this path (and the CPU for dtypes the numba loop does not take). Delta is
computed in float64, where every supported value and every difference of two is exact;
for an exact float64 |Delta| and a float64 tolerance t >= 0, |Delta| > t is an integer
comparison of bit patterns, and NaN's pattern exceeds every finite one, so a NaN counts
as changed at every tolerance for free.

One bincount per piece does all the counting. Its key is (curve bin, refine bit, ULP
bucket); see bins.py for the bins and `Thresholds` for the refine bit.
"""

from __future__ import annotations

import math

import torch

from worker.engine.kernel.bins import (
    FORMATS,
    MAG_BINS,
    MAG_NONFINITE,
    MAG_OFFSET,
    MAG_SUBNORMAL,
    MAG_ZERO,
    NBINS,
    NO_ULP,
    RATIO_BUCKETS,
    ULP_BUCKETS,
    WIDE_BIN_OFFSET,
    PieceStats,
    PrecisionCounts,
    Thresholds,
    class_table,
)

_JOINT = NBINS * 2 * (ULP_BUCKETS + 1)


def _key_dtype(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype, int]:
    """(raw int view, wide int for keys, magnitude mask) of a float dtype's bit pattern."""
    size = torch.empty(0, dtype=dtype).element_size()
    return {
        1: (torch.int8, torch.int32, 0x7F),
        2: (torch.int16, torch.int32, 0x7FFF),
        4: (torch.int32, torch.int64, 0x7FFFFFFF),
        8: (torch.int64, torch.int64, 0x7FFFFFFFFFFFFFFF),
    }[size]


class TorchBackend:
    """Per-piece statistics with torch ops on `device`."""

    def __init__(self, thresholds: Thresholds, chosen_bits: int, device: torch.device, view: bool = True):
        self.device = device
        self.view = view  # the precision view
        self._lut64 = torch.from_numpy(thresholds.bits).to(device)
        self._chosen64 = chosen_bits
        self._cls = torch.from_numpy(class_table(thresholds)).to(device)
        self._ncls = len(thresholds.exact) + 1

    def measure(self, base, tuned, compare_dtype, cols, want_rank, keep_masks=True, cf_kinds=0) -> PieceStats:
        """`base` and `tuned` already on the device, in compare_dtype."""
        n = base.numel()
        # float64 holds every supported value and every difference of two exactly.
        b = base.to(torch.float64)
        u = tuned.to(torch.float64)
        delta = u - b
        counts, bits, pair = self._histogram(delta, base, tuned, compare_dtype)
        grid = counts.view(NBINS, 2, ULP_BUCKETS + 1)
        nan = int(grid[NBINS - 1, 1].sum())
        if nan:
            # Equal infinities subtract to NaN but are unchanged; only a real NaN is NaN.
            real_nan = torch.isnan(b) | torch.isnan(u)
            delta = torch.where((b == u) & ~real_nan, torch.zeros_like(delta), delta)
            counts, bits, pair = self._histogram(delta, base, tuned, compare_dtype, nan_mask=torch.isnan(delta))
            nan = int(torch.count_nonzero(real_nan))
        mask = bits > self._chosen64
        absd = bits.view(torch.float64)
        # NaN contributes nothing to the norms; infinities stay infinite (as in the fused loop).
        finite = torch.nan_to_num(absd, nan=0.0, posinf=math.inf) if nan else absd
        b_finite = torch.nan_to_num(b, nan=0.0, posinf=math.inf, neginf=-math.inf) if nan else b
        grid = counts.view(NBINS * 2, ULP_BUCKETS + 1).cpu()
        stats = PieceStats(
            curve=grid.sum(dim=1),
            ulp=grid[:, :ULP_BUCKETS].sum(dim=0),
            mask=mask,
            numel=n,
            nan=nan,
            delta_sq=float(torch.dot(finite, finite)),
            base_sq=float(torch.dot(b_finite, b_finite)),
            max_abs=float(finite.max()),
        )
        if cols:
            rows = mask.view(-1, cols)
            stats.rows_touched = int(torch.count_nonzero(rows.any(dim=1)))
            stats.cols_touched = rows.any(dim=0)
        if want_rank and cols:
            stats.delta_rows = torch.nan_to_num(delta).float().view(-1, cols).cpu()
        stats.mask = mask.cpu()
        if self.view and compare_dtype in FORMATS:
            self._precision(stats, base, tuned, b, u, delta, bits, pair, compare_dtype, cf_kinds)
        return stats

    def _class(self, delta: torch.Tensor) -> torch.Tensor:
        """Tolerance class (bins.class_table) of each float64 |delta|; NaN in the top class."""
        bits = delta.abs().view(torch.int64)
        bins = ((bits >> 49) - WIDE_BIN_OFFSET).clamp_(0, NBINS - 1)
        return self._cls[bins * 2 + (bits > self._lut64[bins])]

    def _precision(self, stats, base, tuned, b, u, delta, bits, pair, dtype, cf_kinds) -> None:
        """The precision view of a piece (bins.py, numba_precision.py): magnitude bins of the base,
        changed per (bin, class) and (bin, ratio bucket), storage counterfactuals, cosine sums."""
        mbits, emin, _, _ = FORMATS[dtype]
        eb = ((b.abs().view(torch.int64) >> 52) & 0x7FF) - 1023
        mag = eb + MAG_OFFSET
        mag = torch.where(eb < emin, MAG_SUBNORMAL, mag)
        mag = torch.where(b == 0, MAG_ZERO, mag)
        mag = torch.where(eb == 1024, MAG_NONFINITE, mag)
        ncls = self._ncls
        cls = self._cls[pair]
        compared = torch.bincount(mag, minlength=MAG_BINS).cpu().numpy()
        moved = (delta != 0) & ~torch.isnan(delta)
        up = (bits & 0xFFFFFFFFFFFFF) != 0
        ratio = (((bits >> 52) & 0x7FF) - 1023 + up - (torch.clamp(eb, min=emin) - mbits)).clamp_(0, RATIO_BUCKETS - 1)
        ratio = torch.where(moved, ratio, RATIO_BUCKETS)  # NO_RATIO: equal values and NaN
        classes = torch.bincount(mag * ncls + cls, minlength=MAG_BINS * ncls).view(MAG_BINS, ncls).cpu().numpy()
        ratio = torch.bincount(mag * (RATIO_BUCKETS + 1) + ratio, minlength=MAG_BINS * (RATIO_BUCKETS + 1)).view(
            MAG_BINS, RATIO_BUCKETS + 1).cpu().numpy()
        cf = []
        for narrow in (torch.bfloat16, torch.float16)[:cf_kinds]:
            rb, ru = base.to(narrow).double(), tuned.to(narrow).double()
            d = torch.where(rb == ru, 0.0, ru - rb)  # equal infinities are unchanged
            cf.append(torch.bincount(self._class(d), minlength=ncls))
        counterfactual = torch.stack(cf).cpu().numpy() if cf else torch.zeros((0, ncls), dtype=torch.int64).numpy()
        if cf_kinds:
            counterfactual[:, 0] = 0
        b0 = torch.nan_to_num(b, nan=0.0, posinf=math.inf, neginf=-math.inf)
        u0 = torch.nan_to_num(u, nan=0.0, posinf=math.inf, neginf=-math.inf)
        stats.precision = PrecisionCounts(compared, classes, ratio, counterfactual, float(torch.dot(b0, u0)),
                                          float(torch.dot(u0, u0)))

    def _histogram(self, delta, base, tuned, dtype, nan_mask=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(joint counts of this piece, bit patterns of the float64 |delta|, its (curve bin, refine bit))."""
        bits = delta.abs().view(torch.int64)
        bins = ((bits >> 49) - WIDE_BIN_OFFSET).clamp_(0, NBINS - 1)
        refine = bits > self._lut64[bins]
        ulp = ulp_bucket(base, tuned, dtype)
        if nan_mask is not None:
            ulp = ulp.masked_fill_(nan_mask, NO_ULP)
        pair = bins * 2 + refine
        key = pair * (ULP_BUCKETS + 1) + ulp
        return torch.bincount(key, minlength=_JOINT), bits, pair


def ulp_bucket(base: torch.Tensor, tuned: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ceil(log2(ULP distance)) per element; NO_ULP where the values are equal."""
    raw, wide, mag_mask = _key_dtype(dtype)
    top = 63 if wide == torch.int64 else 31

    def key(x: torch.Tensor) -> torch.Tensor:
        # Sign-magnitude bits to a monotone integer, -0 and +0 both 0: a negative value
        # of magnitude m maps to (bits ^ mag_mask) + 1 = -m, without a branch.
        i = x.view(raw).to(wide)
        sign = i >> top
        return (i ^ (sign & mag_mask)) - sign

    dist = (key(tuned) - key(base)).abs_()
    # ceil(log2 d) = floor(log2(2d - 1)), the float exponent of 2d - 1 (exact: d < 2^33).
    # d = 0 makes 2d - 1 negative; its sign bit lifts the bucket past NO_ULP, and clamp lands it there.
    if wide == torch.int64:
        e = ((dist * 2 - 1).to(torch.float64).view(torch.int64) >> 52) & 0xFFF
        return (e - 1023).clamp_(max=NO_ULP)
    e = ((dist * 2 - 1).to(torch.float32).view(torch.int32) >> 23) & 0x1FF
    return (e - 127).clamp_(max=NO_ULP)
