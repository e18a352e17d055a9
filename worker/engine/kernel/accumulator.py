"""Per-tensor statistics of an update, accumulated over pieces in one pass.

Every number follows docs/METRICS.md. The hot path is a handful of
vectorised torch ops per piece: no per-element Python, no full-tensor copies.

Exactness. Delta is computed in float64 on both paths, whatever the dtype: every
supported value (fp8, 16-bit, float32) is exact in float64, and so is the difference
of any two of them (float32 itself is NOT enough for 16-bit inputs: bf16 2^-10 minus
bf16 2^-40 needs ~31 significant bits). For an exact float64 |Delta| and a float64
tolerance t >= 0, |Delta| > t is an integer comparison of bit patterns; NaN's pattern
exceeds every finite one, so a NaN counts as changed at every tolerance for free.

The curve. Bits >> 49 of a positive float64, rebased to float32's exponent bias, keep
its exponent and 3 mantissa bits: bins with edges E = 2^e (1 + m/8), 8 per factor of
two (the float32 bins: same edges). The curve is reported at t = nextdown_f64(E), where
|Delta| > t  <=>  |Delta| >= E, so a suffix sum of one histogram gives exact counts at
~190 tolerances. Norms are float64 sums, per piece and across pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.engine.kernel import numba_backend as cpu_kernel
from worker.engine.kernel.geometry import geometry

EXACT_TOLERANCES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)

# Curve bins of positive float32 values: 8 exponent bits and 3 mantissa bits.
_BIN_SHIFT = 20
_NBINS = 1 << 11
# ULP buckets 1, 2, 3-4, 5-8, ..., (2^31, 2^32]: bucket k holds distances in (2^(k-1), 2^k].
ULP_BUCKETS = 33
_NO_ULP = ULP_BUCKETS  # the bucket of unchanged and NaN elements, dropped at the end
_JOINT = _NBINS * 2 * (ULP_BUCKETS + 1)


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
    chosen_changed: int = 0
    curve: torch.Tensor | None = None  # counts per (curve bin, refine bit)
    ulp: torch.Tensor | None = None  # counts per ULP bucket
    nan: int = 0
    delta_sq: float = 0.0
    base_sq: float = 0.0
    max_abs: float = 0.0
    rows_touched: int = 0
    cols_touched: torch.Tensor | None = None
    rank_rows: list[torch.Tensor] = field(default_factory=list)
    want_geometry: bool = False
    geometry_rows: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (base, tuned) float32


@dataclass
class PieceStats:
    """What one piece contributes; computed independently, folded in order."""

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


class Kernel:
    """Turns (base piece, tuned piece) pairs into per-tensor statistics.

    `thresholds` are the exact tolerances; `chosen` is the tolerance that defines
    masks and row/column coverage (counted as well, exact or not).

    One bincount per piece does all the counting. Its key is (curve bin, refine
    bit, ULP bucket): each exact tolerance lies in its own curve bin (they are a
    decade apart, bins an eighth of an octave), and the refine bit says whether
    |Delta| exceeds the tolerance of its bin, so count(|Delta| > t) is a suffix sum
    plus one cell. The top bin (every |Delta| >= 2^128, inf and NaN) gets +inf as
    its "tolerance", which splits NaN from the rest the same way.
    """

    def __init__(self, thresholds: list[float], chosen: float, device: torch.device):
        self.exact = sorted(set(thresholds))
        self.thresholds = sorted(set(thresholds) | {chosen})
        for t in self.thresholds:  # bit-pattern comparisons hold for finite t >= 0 only
            if not (math.isfinite(t) and t >= 0):
                raise ValueError(f"tolerance must be finite and >= 0, not {t!r}")
        self.chosen = chosen
        self.device = device
        self._chosen64 = _bits_f64(chosen + 0.0)  # -0.0 + 0.0 is +0.0
        # Per curve bin, the bit pattern its refine bit compares against (no tolerance: never set).
        lut64 = torch.full((_NBINS,), 0x7FFFFFFFFFFFFFFF, dtype=torch.int64)
        self._bin64 = {}
        for t in self.exact:
            b64 = _bits_f64(t + 0.0)
            self._bin64[t] = self._wide_bin(b64)
            lut64[self._bin64[t]] = b64
        lut64[_NBINS - 1] = _bits_f64(math.inf)
        if len(set(self._bin64.values())) != len(self.exact):
            raise ValueError("exact tolerances must lie in distinct curve bins")
        self._lut64 = lut64.to(device)
        # The same thresholds as values, for the fused CPU loop (+inf: no tolerance in that bin).
        self._lut_f64 = np.full(_NBINS, np.inf)
        for t in self.exact:
            self._lut_f64[self._bin64[t]] = t
        # Whether pieces carry their mask (masks files need it; the counts do not).
        self.keep_masks = True

    @staticmethod
    def _wide_bin(bits64: int) -> int:
        return min(max((bits64 >> 49) - ((1023 - 127) << 3), 0), _NBINS - 1)

    def start(self, name: str, shape: tuple[int, ...], compare_dtype: torch.dtype, want_rank: bool,
              want_geometry: bool = False) -> TensorAccumulator:
        acc = TensorAccumulator(name, tuple(shape), compare_dtype, want_rank, want_geometry=want_geometry)
        acc.curve = torch.zeros(_NBINS * 2, dtype=torch.int64)
        acc.ulp = torch.zeros(ULP_BUCKETS, dtype=torch.int64)
        if len(shape) == 2:
            acc.cols_touched = torch.zeros(shape[1], dtype=torch.bool, device=self.device)
        return acc

    def measure(self, base: torch.Tensor, tuned: torch.Tensor, compare_dtype: torch.dtype,
                cols: int | None, want_rank: bool, want_geometry: bool = False) -> PieceStats:
        """Statistics of one piece (1-D, same length; whole rows of `cols` for matrices).

        Pure: touches no accumulator, so pieces may be measured on several threads.
        """
        n = base.numel()
        if n == 0:
            empty = torch.zeros(0, dtype=torch.bool)
            return PieceStats(torch.zeros(_NBINS * 2, dtype=torch.int64), torch.zeros(ULP_BUCKETS, dtype=torch.int64),
                              empty, 0, 0, 0.0, 0.0, 0.0)
        base = base.to(self.device, non_blocking=True)
        tuned = tuned.to(self.device, non_blocking=True)
        if base.dtype != compare_dtype:
            base = base.to(compare_dtype)  # round to nearest even, as metrics.md says
        if tuned.dtype != compare_dtype:
            tuned = tuned.to(compare_dtype)
        stats = self._measure(base, tuned, compare_dtype, cols, want_rank)
        if want_geometry and cols:  # a copy: the source may reuse or unmap its buffers after release
            stats.geometry_rows = tuple(x.to("cpu", torch.float32, copy=True).view(-1, cols) for x in (base, tuned))
        return stats

    def _measure(self, base, tuned, compare_dtype, cols, want_rank) -> PieceStats:
        n = base.numel()
        if self.device.type == "cpu" and compare_dtype in cpu_kernel.SUPPORTED:
            return self._measure_fused(base, tuned, compare_dtype, cols, want_rank)
        # float64 holds every supported value and every difference of two exactly.
        b = base.to(torch.float64)
        u = tuned.to(torch.float64)
        delta = u - b
        counts, bits = self._histogram(delta, base, tuned, compare_dtype)
        grid = counts.view(_NBINS, 2, ULP_BUCKETS + 1)
        nan = int(grid[_NBINS - 1, 1].sum())
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
        grid = counts.view(_NBINS * 2, ULP_BUCKETS + 1).cpu()
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

    def _measure_fused(self, base, tuned, compare_dtype, cols, want_rank) -> PieceStats:
        curve, ulp, mask, col_flags, out = cpu_kernel.measure_cpu(
            base.contiguous(), tuned.contiguous(), compare_dtype, cols, self._lut_f64, float(self.chosen), ULP_BUCKETS,
            self.keep_masks,
        )
        nan, delta_sq, base_sq, max_abs, rows_touched, chosen_changed = out
        stats = PieceStats(
            curve=torch.from_numpy(curve), ulp=torch.from_numpy(ulp),
            mask=torch.from_numpy(mask) if mask is not None else None,
            numel=base.numel(), nan=nan, delta_sq=delta_sq, base_sq=base_sq, max_abs=max_abs,
            rows_touched=rows_touched, cols_touched=torch.from_numpy(col_flags) if cols else None,
            chosen_changed=chosen_changed,
        )
        if want_rank and cols:
            delta = tuned.double() - base.double()
            same = tuned == base  # equal infinities are unchanged
            stats.delta_rows = torch.nan_to_num(torch.where(same, 0.0, delta)).float().view(-1, cols)
        return stats

    def fold(self, acc: TensorAccumulator, piece: PieceStats) -> None:
        acc.curve += piece.curve
        acc.ulp += piece.ulp
        acc.chosen_changed += (piece.chosen_changed if piece.chosen_changed is not None
                               else int(torch.count_nonzero(piece.mask)))
        acc.nan += piece.nan
        acc.numel += piece.numel
        acc.delta_sq += piece.delta_sq
        acc.base_sq += piece.base_sq
        acc.max_abs = max(acc.max_abs, piece.max_abs)
        acc.rows_touched += piece.rows_touched
        if piece.cols_touched is not None:
            acc.cols_touched |= piece.cols_touched
        if piece.delta_rows is not None:
            acc.rank_rows.append(piece.delta_rows)
        if piece.geometry_rows is not None:
            acc.geometry_rows.append(piece.geometry_rows)

    def _histogram(self, delta, base, tuned, dtype, nan_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(joint counts of this piece, bit patterns of the float64 |delta|)."""
        bits = delta.abs().view(torch.int64)
        bins = ((bits >> 49) - ((1023 - 127) << 3)).clamp_(0, _NBINS - 1)
        refine = bits > self._lut64[bins]
        ulp = self._ulp_bucket(base, tuned, dtype)
        if nan_mask is not None:
            ulp = ulp.masked_fill_(nan_mask, _NO_ULP)
        key = (bins * 2 + refine) * (ULP_BUCKETS + 1) + ulp
        return torch.bincount(key, minlength=_JOINT), bits

    @staticmethod
    def _ulp_bucket(base: torch.Tensor, tuned: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ceil(log2(ULP distance)) per element; _NO_ULP where the values are equal."""
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
        # d = 0 makes 2d - 1 negative; its sign bit lifts the bucket past _NO_ULP, and clamp lands it there.
        if wide == torch.int64:
            e = ((dist * 2 - 1).to(torch.float64).view(torch.int64) >> 52) & 0xFFF
            return (e - 1023).clamp_(max=_NO_ULP)
        e = ((dist * 2 - 1).to(torch.float32).view(torch.int32) >> 23) & 0x1FF
        return (e - 127).clamp_(max=_NO_ULP)

    def finish(self, acc: TensorAccumulator) -> dict:
        grid = acc.curve.view(_NBINS, 2)
        per_bin = grid.sum(dim=1)
        suffix = torch.flip(torch.cumsum(torch.flip(per_bin, [0]), 0), [0]).tolist() + [0]
        refined = grid[:, 1]
        changed = {}
        for t in self.thresholds:
            if t == self.chosen and t not in self.exact:
                changed[tolerance_key(t)] = acc.chosen_changed
                continue
            k = self._bin64[t]
            changed[tolerance_key(t)] = int(suffix[k + 1] + refined[k])
        ulp = acc.ulp.tolist()
        two_d = len(acc.shape) == 2
        record = {
            "name": acc.name,
            "numel": acc.numel,
            "changed": changed,
            "curve_changed": [int(suffix[k]) for k in CURVE_BINS],
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
            "geometry": None,
        }
        if acc.want_rank and two_d and acc.numel:
            delta = torch.cat(acc.rank_rows) if len(acc.rank_rows) > 1 else acc.rank_rows[0]
            acc.rank_rows.clear()
            rank = int(torch.linalg.matrix_rank(delta.to(self.device)))  # on the GPU when there is one
            record["rank"] = rank
            record["rank_ratio"] = rank / min(delta.shape)
        if acc.want_geometry and two_d and acc.numel:
            base = torch.cat([b for b, _ in acc.geometry_rows])
            tuned = torch.cat([t for _, t in acc.geometry_rows])
            acc.geometry_rows.clear()
            record["geometry"] = geometry(base, tuned, self.device)
        return record
