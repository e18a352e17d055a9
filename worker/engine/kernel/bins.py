"""The contract both kernel backends count into: curve bins, ULP buckets, tolerance tables.

The curve. Bits >> 49 of a positive float64, rebased to float32's exponent bias, keep
its exponent and 3 mantissa bits: bins with edges E = 2^e (1 + m/8), 8 per factor of
two (the float32 bins: same edges). The curve is reported at t = nextdown_f64(E), where
|Delta| > t  <=>  |Delta| >= E, so a suffix sum of one histogram gives exact counts at
~190 tolerances.

The ULP view. Bucket k holds ULP distances in (2^(k-1), 2^k]: 1, 2, 3-4, 5-8, ...,
(2^31, 2^32], 33 buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from worker.engine.tolerance import Tolerance, tolerance_key

EXACT_TOLERANCES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)

# Curve bins of positive float32 values: 8 exponent bits and 3 mantissa bits.
BIN_SHIFT = 20
NBINS = 1 << 11
# float64 bits >> 49 minus this is the float32 curve bin (exponent rebased from bias 1023 to 127).
WIDE_BIN_OFFSET = (1023 - 127) << 3
# ULP buckets 1, 2, 3-4, 5-8, ..., (2^31, 2^32]: bucket k holds distances in (2^(k-1), 2^k].
ULP_BUCKETS = 33
NO_ULP = ULP_BUCKETS  # the bucket of unchanged and NaN elements, dropped at the end


def wide_bin(bits64: int) -> int:
    """Curve bin of a non-negative float64 given by its bit pattern (clamped to the table)."""
    return min(max((bits64 >> 49) - WIDE_BIN_OFFSET, 0), NBINS - 1)


def bits_f64(x: float) -> int:
    return int(np.array([x], dtype=np.float64).view(np.int64)[0])


def _bin_of(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.int32)[0]) >> BIN_SHIFT


def _edge_value(k: int) -> float:
    return float(np.array([k << BIN_SHIFT], dtype=np.int32).view(np.float32)[0])


def curve_edges(lo: float = 1e-9, hi: float = 1e-2) -> list[int]:
    """Histogram bins whose lower edges E = 2^e (1 + m/8) span [lo, hi]."""
    return list(range(_bin_of(lo), _bin_of(hi) + 2))


CURVE_BINS = curve_edges()
# The tolerance at which a curve point is exact: just below the bin's lower edge.
CURVE_TOLERANCES = [float(np.nextafter(_edge_value(k), 0.0)) for k in CURVE_BINS]


def ulp_labels() -> list[str]:
    labels = ["1", "2"]
    for k in range(2, ULP_BUCKETS):
        labels.append(f"{(1 << (k - 1)) + 1}-{1 << k}")
    return labels


class Thresholds:
    """The exact tolerances placed in the curve bins, as each backend reads them.

    Each exact tolerance lies in its own curve bin (they are a decade apart, bins an eighth
    of an octave); a per-bin "refine bit" says whether |Delta| exceeds the tolerance of its
    bin, so count(|Delta| > t) is a suffix sum plus one cell. The top bin (every |Delta| >=
    2^128, inf and NaN) gets +inf as its "tolerance", which splits NaN from the rest the same way.
    """

    def __init__(self, exact: list[float]):
        # Bit-pattern comparisons hold for finite t >= 0 only: Tolerance refuses the rest.
        self.exact = sorted({float(Tolerance(t)) for t in exact})
        self.bin = {t: wide_bin(bits_f64(t + 0.0)) for t in self.exact}  # -0.0 + 0.0 is +0.0
        if len(set(self.bin.values())) != len(self.exact):
            raise ValueError("exact tolerances must lie in distinct curve bins")
        # Bit patterns per bin (torch backend); no tolerance: the largest pattern, never exceeded.
        self.bits = np.full(NBINS, 0x7FFFFFFFFFFFFFFF, dtype=np.int64)
        # The same as float64 values (numba backend); +inf: no tolerance in that bin.
        self.values = np.full(NBINS, np.inf)
        for t in self.exact:
            self.bits[self.bin[t]] = bits_f64(t + 0.0)
            self.values[self.bin[t]] = t
        self.bits[NBINS - 1] = bits_f64(math.inf)

    def counts(self, curve_pairs: list[int] | np.ndarray) -> dict[str, int]:
        """count(|Delta| > t) per exact tolerance from (bin, refine bit) counts, keyed by tolerance_key."""
        grid = np.asarray(curve_pairs, dtype=np.int64).reshape(NBINS, 2)
        suffix = np.concatenate([np.cumsum(grid.sum(axis=1)[::-1])[::-1], [0]])
        return {tolerance_key(t): int(suffix[self.bin[t] + 1] + grid[self.bin[t], 1]) for t in self.exact}


def curve_counts(curve_pairs) -> list[int]:
    """changed at every curve tolerance, from (bin, refine bit) counts."""
    per_bin = np.asarray(curve_pairs, dtype=np.int64).reshape(NBINS, 2).sum(axis=1)
    suffix = np.cumsum(per_bin[::-1])[::-1]
    return [int(suffix[k]) for k in CURVE_BINS]


@dataclass
class PieceStats:
    """What one piece contributes (either backend computes exactly this); folded in order."""

    curve: torch.Tensor  # (curve bin, refine bit) counts
    ulp: torch.Tensor  # ULP bucket counts
    mask: torch.Tensor | None  # changed at the chosen tolerance (bool, CPU); None when the kernel keeps no masks
    numel: int
    nan: int
    delta_sq: float
    base_sq: float
    max_abs: float
    rows_touched: int = 0
    cols_touched: torch.Tensor | None = None
    delta_rows: torch.Tensor | None = None  # for rank
    # (base rows, tuned rows) as float32 on the CPU, for geometry: exact for every compared dtype
    geometry_rows: tuple[torch.Tensor, torch.Tensor] | None = None
    chosen_changed: int | None = None  # count of `mask` (given when the mask is not kept)
    precision: PrecisionCounts | None = None  # None without the view, or for a dtype without a float format


@dataclass
class PrecisionCounts:
    """The precision view's sums over a piece or a tensor (numpy; a piece's counts may be uint32)."""

    compared: np.ndarray  # elements per magnitude bin (MAG_BINS)
    # elements per (magnitude bin, tolerance class) and per (magnitude bin, ratio bucket or NO_RATIO),
    # where class 0 and NO_RATIO hold what a backend happened to visit (the unchanged elements, or some)
    classes: np.ndarray
    ratio: np.ndarray
    counterfactual: np.ndarray  # tolerance classes per applicable storage dtype
    dot: float  # float64 sums for the cosine
    tuned_sq: float

    def widened(self) -> PrecisionCounts:
        """A copy with int64 counts, to add pieces into."""
        return PrecisionCounts(self.compared.astype(np.int64), self.classes.astype(np.int64),
                               self.ratio.astype(np.int64), self.counterfactual.astype(np.int64), self.dot,
                               self.tuned_sq)

    def add(self, other: PrecisionCounts) -> PrecisionCounts:
        """Add another piece's sums into these (int64, from `widened`); returns self."""
        self.compared += other.compared
        self.classes += other.classes
        self.ratio += other.ratio
        self.counterfactual += other.counterfactual
        self.dot += other.dot
        self.tuned_sq += other.tuned_sq
        return self


# --- the precision view (metrics.md, "Precision and magnitude") ------------------------------

# Magnitude bins of |w_base| in the compared dtype: 0 zero, 1 subnormal, 2..255 the binary
# exponent e = floor(log2 |w|) at bin e + MAG_OFFSET (e in [-126, 127] covers every normal
# value of every supported dtype), 256 inf or NaN.
MAG_BINS = 257
MAG_ZERO, MAG_SUBNORMAL, MAG_NONFINITE = 0, 1, 256
MAG_OFFSET = 128
# Ratio buckets of |Delta| / spacing(w_base), spacing = 2^(max(e, emin) - mantissa bits): bucket k
# holds ratios in (2^(k-1), 2^k], bucket 0 ratios <= 1 (one step or less), as the ULP buckets.
RATIO_BUCKETS = 33
NO_RATIO = RATIO_BUCKETS  # equal values and NaN

# (mantissa bits, smallest normal exponent, exponent bias, raw bits) of each compared dtype
FORMATS = {
    torch.bfloat16: (7, -126, 127, 16),
    torch.float16: (10, -14, 15, 16),
    torch.float32: (23, -126, 127, 32),
    torch.float8_e4m3fn: (3, -6, 7, 8),
    torch.float8_e5m2: (2, -14, 15, 8),
}
# The storage counterfactuals, in the order the kernels count them.
COUNTERFACTUALS = ("bfloat16", "float16")
_WIDER = {torch.float32: 2, torch.float16: 1}


def rank_delta(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """Delta in float32 as the ranks and geometry take it: equal values (infinities too) 0, non-finite
    made finite. One float32 subtraction, correctly rounded (exact for 16- and 8-bit inputs), into
    one new float32 tensor, where a float64 detour allocated ~45 (measured: 5.4 M page
    faults, ~8 s of system time, over the bench pair's --rank all pass). 16-bit pairs on the CPU,
    the common case, in one numba loop (numba_delta.py)."""
    d = torch.empty(base.shape, dtype=torch.float32, device=base.device)
    if base.dtype == tuned.dtype and base.dtype in (torch.bfloat16, torch.float16) and base.device.type == "cpu":
        from worker.engine.kernel import numba_delta

        bits = [x.contiguous().view(torch.int16).numpy().view(np.uint16).reshape(-1) for x in (base, tuned)]
        if base.dtype == torch.bfloat16:
            numba_delta.rank_delta_bf16(*bits, d.view(-1).numpy())
        else:
            numba_delta.rank_delta_table(*bits, numba_delta.widening_table(base.dtype), d.view(-1).numpy())
        return d
    d.copy_(tuned)
    d.sub_(base)
    lo, hi = torch.aminmax(d) if d.numel() else (0.0, 0.0)  # no bool copy of the piece, as isfinite(d).all() made
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        d = torch.nan_to_num(torch.where(tuned == base, 0.0, d))
    return d


def counterfactual_kinds(base_dtype: torch.dtype, tuned_dtype: torch.dtype) -> int:
    """How many of COUNTERFACTUALS apply to a pair stored in these dtypes: both sides wider than
    bf16 (fp32, or fp16 against fp16/fp32) get bf16; both fp32 get fp16 as well."""
    return min(_WIDER.get(base_dtype, 0), _WIDER.get(tuned_dtype, 0))


def magnitude_label(k: int) -> str:
    if k == MAG_ZERO:
        return "0"
    if k == MAG_SUBNORMAL:
        return "subnormal"
    if k == MAG_NONFINITE:
        return "inf/nan"
    return f"2^{k - MAG_OFFSET}"


def class_table(thresholds: Thresholds) -> np.ndarray:
    """Tolerance class of each (curve bin, refine bit) and of the spare pair after them: the number
    of exact tolerances t with |Delta| > t, so changed(t_j) is the count of classes > j."""
    below = np.zeros(NBINS, np.int64)  # exact tolerances in lower bins
    own = np.zeros(NBINS, np.int64)  # 1 where a tolerance lies in the bin
    for t in thresholds.exact:
        below[thresholds.bin[t] + 1:] += 1
        own[thresholds.bin[t]] = 1
    table = np.zeros(2 * NBINS + 2, np.int64)
    table[0:2 * NBINS:2] = below
    table[1:2 * NBINS:2] = below + own
    return table
