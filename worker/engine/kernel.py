"""Per-tensor statistics of an update, accumulated over pieces in one pass.

Every number follows ../shared/design/metrics.md. The hot path is a handful of
vectorised torch ops per piece: no per-element Python, no full-tensor copies.

Exactness. Delta is exact: 16- and 8-bit values differ exactly in float32, and
32-bit values in float64. For an exact float32 |Delta| and a float64 tolerance t,
|Delta| > t  <=>  |Delta| > round_down_f32(t), and for non-negative floats that is
an integer comparison of bit patterns; NaN's pattern exceeds every finite one, so a
NaN counts as changed at every tolerance for free.

The curve. Bits >> 20 of a positive float32 keep its exponent and 3 mantissa bits:
bins with edges E = 2^e (1 + m/8), 8 per factor of two. The curve is reported at
t = nextdown_f64(E), where |Delta| > t  <=>  |Delta| >= E for float32 and float64
alike, so a suffix sum of one histogram gives exact counts at ~190 tolerances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

EXACT_TOLERANCES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)

# Curve bins of positive float32 values: 8 exponent bits and 3 mantissa bits.
_BIN_SHIFT = 20
_NBINS = 1 << 11
# ULP buckets 1, 2, 3-4, 5-8, ..., (2^31, 2^32]: bucket k holds distances in (2^(k-1), 2^k].
ULP_BUCKETS = 33
_NO_ULP = ULP_BUCKETS  # the bucket of unchanged and NaN elements, dropped at the end


def tolerance_key(t: float) -> str:
    return repr(float(t))


def curve_edges(lo: float = 1e-9, hi: float = 1e-2) -> list[int]:
    """Histogram bins whose lower edges E = 2^e (1 + m/8) span [lo, hi]."""
    first = _bin_of(lo)
    last = _bin_of(hi) + 1
    return list(range(first, last + 1))


def _bin_of(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.int32)[0]) >> _BIN_SHIFT


def _edge_value(k: int) -> float:
    return float(np.array([k << _BIN_SHIFT], dtype=np.int32).view(np.float32)[0])


CURVE_BINS = curve_edges()
# The tolerance at which a curve point is exact: just below the bin's lower edge.
CURVE_TOLERANCES = [float(np.nextafter(_edge_value(k), 0.0)) for k in CURVE_BINS]


def _f32_round_down(t: float) -> float:
    r = float(np.float32(t))
    return r if r <= t else float(np.nextafter(np.float32(t), np.float32(0)))


def _bits_f32(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.int32)[0])


def _bits_f64(x: float) -> int:
    return int(np.array([x], dtype=np.float64).view(np.int64)[0])


def _key_dtype(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype, int]:
    """(raw int view, wide int for keys, magnitude mask) of a float dtype's bit pattern."""
    size = torch.empty(0, dtype=dtype).element_size()
    return {
        1: (torch.int8, torch.int32, 0x7F),
        2: (torch.int16, torch.int32, 0x7FFF),
        4: (torch.int32, torch.int64, 0x7FFFFFFF),
        8: (torch.int64, torch.int64, 0x7FFFFFFFFFFFFFFF),
    }[size]


@dataclass
class TensorAccumulator:
    """Running sums of one tensor's statistics; `Kernel.finish` turns it into a record."""

    name: str
    shape: tuple[int, ...]  # the compared shape (common rows when the vocabulary was resized)
    compare_dtype: torch.dtype
    want_rank: bool
    numel: int = 0
    changed: list[int] = field(default_factory=list)
    joint: torch.Tensor | None = None  # curve bin x ULP bucket counts
    nan: int = 0
    delta_sq: float = 0.0
    base_sq: float = 0.0
    max_abs: float = 0.0
    rows_touched: int = 0
    cols_touched: torch.Tensor | None = None
    rank_rows: list[torch.Tensor] = field(default_factory=list)


class Kernel:
    """Turns (base piece, tuned piece) pairs into per-tensor statistics.

    `thresholds` are the exact tolerances (plus the chosen one); `chosen` is the
    tolerance that defines masks and row/column coverage.
    """

    def __init__(self, thresholds: list[float], chosen: float, device: torch.device):
        self.thresholds = sorted(set(thresholds) | {chosen})
        self.chosen_index = self.thresholds.index(chosen)
        self.device = device
        self._t32 = [_bits_f32(_f32_round_down(t)) for t in self.thresholds]
        self._t64 = [_bits_f64(t) for t in self.thresholds]
        self._nan32 = _bits_f32(math.inf)
        self._nan64 = _bits_f64(math.inf)

    def start(self, name: str, shape: tuple[int, ...], compare_dtype: torch.dtype, want_rank: bool) -> TensorAccumulator:
        acc = TensorAccumulator(name, tuple(shape), compare_dtype, want_rank)
        acc.changed = [0] * len(self.thresholds)
        acc.joint = torch.zeros(_NBINS * (ULP_BUCKETS + 1), dtype=torch.int64, device=self.device)
        if len(shape) == 2:
            acc.cols_touched = torch.zeros(shape[1], dtype=torch.bool, device=self.device)
        return acc

    def update(self, acc: TensorAccumulator, base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
        """Fold one piece (1-D, same length, row-aligned for 2-D tensors) into `acc`.

        Returns the piece's changed mask at the chosen tolerance (bool, on CPU).
        """
        n = base.numel()
        if n == 0:
            return torch.zeros(0, dtype=torch.bool)
        base = base.to(self.device, non_blocking=True)
        tuned = tuned.to(self.device, non_blocking=True)
        if base.dtype != acc.compare_dtype:
            base = base.to(acc.compare_dtype)  # round to nearest even, as metrics.md says
        if tuned.dtype != acc.compare_dtype:
            tuned = tuned.to(acc.compare_dtype)
        wide = acc.compare_dtype in (torch.float32, torch.float64)
        work = torch.float64 if wide else torch.float32
        b = base.to(work)
        delta = tuned.to(work) - b
        absd = delta.abs()
        bits = absd.view(torch.int64 if wide else torch.int32)
        tbits = self._t64 if wide else self._t32

        nan = int(torch.count_nonzero(bits > (self._nan64 if wide else self._nan32)))
        if nan:
            # Equal infinities subtract to NaN but are unchanged; only a real NaN is NaN.
            real_nan = torch.isnan(base) | torch.isnan(tuned)
            same = (base == tuned) & ~real_nan
            delta = torch.where(same, torch.zeros_like(delta), delta)
            absd = delta.abs()
            bits = absd.view(torch.int64 if wide else torch.int32)
            nan = int(torch.count_nonzero(real_nan))

        chosen_mask = None
        for i, t in enumerate(tbits):
            over = bits > t
            acc.changed[i] += int(torch.count_nonzero(over))
            if i == self.chosen_index:
                chosen_mask = over

        # Joint histogram of curve bin and ULP bucket: one bincount serves both views.
        if wide:
            curve_bin = ((bits >> 49) - ((1023 - 127) << 3)).clamp_(0, _NBINS - 1)
        else:
            curve_bin = bits >> _BIN_SHIFT
        ulp = self._ulp_bucket(base, tuned, acc.compare_dtype)
        if nan:
            ulp = torch.where(torch.isnan(delta), torch.full_like(ulp, _NO_ULP), ulp)
        acc.joint += torch.bincount(curve_bin * (ULP_BUCKETS + 1) + ulp, minlength=acc.joint.numel())

        finite = torch.where(torch.isnan(absd), torch.zeros_like(absd), absd) if nan else absd
        acc.nan += nan
        acc.numel += n
        acc.delta_sq += float(torch.dot(finite, finite))
        acc.base_sq += float(torch.dot(torch.nan_to_num(b), torch.nan_to_num(b))) if nan else float(torch.dot(b, b))
        acc.max_abs = max(acc.max_abs, float(finite.max()))

        if acc.cols_touched is not None:
            grid = chosen_mask.view(-1, acc.shape[1])
            acc.rows_touched += int(torch.count_nonzero(grid.any(dim=1)))
            acc.cols_touched |= grid.any(dim=0)
        if acc.want_rank:
            acc.rank_rows.append(torch.nan_to_num(delta).float().view(-1, acc.shape[1]))
        return chosen_mask.cpu()

    @staticmethod
    def _ulp_bucket(base: torch.Tensor, tuned: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ceil(log2(ULP distance)) per element, _NO_ULP where the bits are equal."""
        raw, wide, mag_mask = _key_dtype(dtype)

        def key(x: torch.Tensor) -> torch.Tensor:
            i = x.view(raw).to(wide)
            mag = i & mag_mask
            return torch.where(i < 0, -mag, mag)  # monotone in value; -0 and +0 share 0

        dist = (key(tuned) - key(base)).abs_()
        exponent = torch.frexp((dist - 1).to(torch.float64)).exponent
        # frexp(d - 1) = bit_length(d - 1) = ceil(log2 d) for d >= 1; d = 1 gives 0.
        return torch.where(dist == 0, torch.full_like(exponent, _NO_ULP), exponent).to(torch.int64)

    def finish(self, acc: TensorAccumulator) -> dict:
        joint = acc.joint.view(_NBINS, ULP_BUCKETS + 1).cpu()
        per_bin = joint.sum(dim=1)
        suffix = torch.flip(torch.cumsum(torch.flip(per_bin, [0]), 0), [0])
        curve = [int(suffix[k]) for k in CURVE_BINS]
        ulp = joint[:, :ULP_BUCKETS].sum(dim=0).tolist()
        two_d = len(acc.shape) == 2
        record = {
            "name": acc.name,
            "numel": acc.numel,
            "changed": {tolerance_key(t): c for t, c in zip(self.thresholds, acc.changed)},
            "curve_changed": curve,
            "nan": acc.nan,
            "row_coverage": acc.rows_touched / acc.shape[0] if two_d and acc.shape[0] else None,
            "col_coverage": float(acc.cols_touched.sum()) / acc.shape[1] if two_d and acc.shape[1] else None,
            "delta_fro": math.sqrt(acc.delta_sq),
            "base_fro": math.sqrt(acc.base_sq),
            "ratio": math.sqrt(acc.delta_sq) / math.sqrt(acc.base_sq) if acc.base_sq > 0 else None,
            "max_abs_delta": acc.max_abs,
            "ulp": [int(c) for c in ulp],
            "rank": None,
            "rank_ratio": None,
        }
        if acc.want_rank and two_d and acc.numel:
            delta = torch.cat(acc.rank_rows) if len(acc.rank_rows) > 1 else acc.rank_rows[0]
            acc.rank_rows.clear()
            rank = int(torch.linalg.matrix_rank(delta))
            record["rank"] = rank
            record["rank_ratio"] = rank / min(delta.shape)
        return record
