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

from worker.engine.kernel.bins import NBINS, NO_ULP, ULP_BUCKETS, WIDE_BIN_OFFSET, PieceStats, Thresholds

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

    def __init__(self, thresholds: Thresholds, chosen_bits: int, device: torch.device):
        self.device = device
        self._lut64 = torch.from_numpy(thresholds.bits).to(device)
        self._chosen64 = chosen_bits

    def measure(self, base, tuned, compare_dtype, cols, want_rank, keep_masks=True) -> PieceStats:
        """`base` and `tuned` already on the device, in compare_dtype."""
        n = base.numel()
        # float64 holds every supported value and every difference of two exactly.
        b = base.to(torch.float64)
        u = tuned.to(torch.float64)
        delta = u - b
        counts, bits = self._histogram(delta, base, tuned, compare_dtype)
        grid = counts.view(NBINS, 2, ULP_BUCKETS + 1)
        nan = int(grid[NBINS - 1, 1].sum())
        if nan:
            # Equal infinities subtract to NaN but are unchanged; only a real NaN is NaN.
            real_nan = torch.isnan(b) | torch.isnan(u)
            delta = torch.where((b == u) & ~real_nan, torch.zeros_like(delta), delta)
            counts, bits = self._histogram(delta, base, tuned, compare_dtype, nan_mask=torch.isnan(delta))
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
        return stats

    def _histogram(self, delta, base, tuned, dtype, nan_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(joint counts of this piece, bit patterns of the float64 |delta|)."""
        bits = delta.abs().view(torch.int64)
        bins = ((bits >> 49) - WIDE_BIN_OFFSET).clamp_(0, NBINS - 1)
        refine = bits > self._lut64[bins]
        ulp = ulp_bucket(base, tuned, dtype)
        if nan_mask is not None:
            ulp = ulp.masked_fill_(nan_mask, NO_ULP)
        key = (bins * 2 + refine) * (ULP_BUCKETS + 1) + ulp
        return torch.bincount(key, minlength=_JOINT), bits


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
