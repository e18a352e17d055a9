"""Per-tensor statistics of an update, accumulated over pieces in one pass.

Every number follows docs/METRICS.md. A backend measures each piece
(`numba_backend`: a fused loop, the CPU default; `torch_backend`: vectorised torch ops,
CUDA's path), both counting into the bins of `bins.py`; this module folds the pieces of
a tensor in order and turns the sums into its record. Norms are float64 sums, per piece
and across pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from worker.engine.kernel import numba_backend, svd_phase
from worker.engine.kernel.bins import (
    CURVE_TOLERANCES,
    EXACT_TOLERANCES,
    NBINS,
    ULP_BUCKETS,
    PieceStats,
    PrecisionCounts,
    Thresholds,
    bits_f64,
    curve_counts,
)
from worker.engine.kernel.torch_backend import TorchBackend
from worker.engine.precision import tensor_precision
from worker.engine.tolerance import Tolerance, tolerance_key

__all__ = ["CURVE_TOLERANCES", "EXACT_TOLERANCES", "ULP_BUCKETS", "Kernel", "PieceStats", "TensorAccumulator",
           "tolerance_key"]

Backend = Literal["auto", "numba", "torch"]


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
    # The precision view: the pieces' sums; None until the first piece brings them.
    cf_kinds: int = 0
    precision: PrecisionCounts | None = None


class Kernel:
    """Turns (base piece, tuned piece) pairs into per-tensor statistics.

    `thresholds` are the exact tolerances; `chosen` is the tolerance that defines
    masks and row/column coverage (counted as well, exact or not).

    `backend`: "numba" (the fused CPU loop; dtypes it does not take go to torch), "torch"
    (the torch ops, on any device), or "auto": numba on a CPU, torch on CUDA.
    `precision`: count the precision view (off only to measure what it costs, bench/precision_cost.py).
    """

    def __init__(self, thresholds: list[float], chosen: float, device: torch.device, backend: Backend = "auto",
                 precision: bool = True):
        self.table = Thresholds(thresholds)  # refuses what is not a Tolerance
        Tolerance(chosen)
        self.exact = self.table.exact
        self.thresholds = sorted(set(thresholds) | {chosen})
        self.chosen = chosen
        self.device = device
        if backend not in ("auto", "numba", "torch"):
            raise ValueError(f"backend must be auto, numba or torch, not {backend!r}")
        if backend == "numba" and device.type != "cpu":
            raise ValueError("the numba backend runs on the CPU only")
        self.backend = "torch" if backend == "torch" or device.type != "cpu" else "numba"
        self._torch = TorchBackend(self.table, bits_f64(chosen + 0.0), device, precision)
        self._numba = numba_backend.NumbaBackend(self.table, chosen, precision) if self.backend == "numba" else None
        # Whether pieces carry their mask (masks files need it; the counts do not).
        self.keep_masks = True

    def start(self, name: str, shape: tuple[int, ...], compare_dtype: torch.dtype, want_rank: bool,
              want_geometry: bool = False, cf_kinds: int = 0) -> TensorAccumulator:
        """`cf_kinds`: how many storage counterfactuals (bins.counterfactual_kinds) the tensor gets."""
        acc = TensorAccumulator(name, tuple(shape), compare_dtype, want_rank, want_geometry=want_geometry,
                                cf_kinds=cf_kinds)
        acc.curve = torch.zeros(NBINS * 2, dtype=torch.int64)
        acc.ulp = torch.zeros(ULP_BUCKETS, dtype=torch.int64)
        if len(shape) == 2:
            acc.cols_touched = torch.zeros(shape[1], dtype=torch.bool, device=self.device)
        return acc

    def fused(self, compare_dtype: torch.dtype) -> bool:
        """Whether pieces of this dtype go through the fused numba loop (else the torch path)."""
        return self._numba is not None and compare_dtype in numba_backend.SUPPORTED

    def measure(self, base: torch.Tensor, tuned: torch.Tensor, compare_dtype: torch.dtype,
                cols: int | None, want_rank: bool, want_geometry: bool = False, cf_kinds: int = 0) -> PieceStats:
        """Statistics of one piece (1-D, same length; whole rows of `cols` for matrices).

        Pure: touches no accumulator, so pieces may be measured on several threads.
        """
        n = base.numel()
        if n == 0:
            empty = torch.zeros(0, dtype=torch.bool)
            return PieceStats(torch.zeros(NBINS * 2, dtype=torch.int64), torch.zeros(ULP_BUCKETS, dtype=torch.int64),
                              empty, 0, 0, 0.0, 0.0, 0.0)
        base = base.to(self.device, non_blocking=True)
        tuned = tuned.to(self.device, non_blocking=True)
        if base.dtype != compare_dtype:
            base = base.to(compare_dtype)  # round to nearest even, as docs/METRICS.md says
        if tuned.dtype != compare_dtype:
            tuned = tuned.to(compare_dtype)
        # with geometry, the SVD phase takes Delta from geometry's rows: no third copy kept
        stats = self._measure(base, tuned, compare_dtype, cols, want_rank and not want_geometry, cf_kinds)
        if want_geometry and cols:  # a copy: the source may reuse or unmap its buffers after release
            # 16-bit rows stay 16-bit (half the memory; the SVD phase widens a block at a time), others float32
            keep = base.dtype if base.dtype in (torch.bfloat16, torch.float16) else torch.float32
            stats.geometry_rows = tuple(x.to("cpu", keep, copy=True).view(-1, cols) for x in (base, tuned))
        return stats

    def _measure(self, base, tuned, compare_dtype, cols, want_rank, cf_kinds=0) -> PieceStats:
        if self.fused(compare_dtype):
            return self._numba.measure(base, tuned, compare_dtype, cols, want_rank, self.keep_masks, cf_kinds)
        return self._torch.measure(base, tuned, compare_dtype, cols, want_rank, self.keep_masks, cf_kinds)

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
        if piece.precision is not None:
            acc.precision = piece.precision.widened() if acc.precision is None else acc.precision.add(piece.precision)

    def finish(self, acc: TensorAccumulator) -> dict:
        curve = acc.curve.numpy()
        exact = self.table.counts(curve)
        changed = {tolerance_key(t): (exact[tolerance_key(t)] if t in self.exact else acc.chosen_changed)
                   for t in self.thresholds}
        ulp = acc.ulp.tolist()
        two_d = len(acc.shape) == 2
        record = {
            "name": acc.name,
            "numel": acc.numel,
            "changed": changed,
            "curve_changed": curve_counts(curve),
            "nan": acc.nan,
            "row_coverage": acc.rows_touched / acc.shape[0] if two_d and acc.shape[0] else None,
            "col_coverage": float(acc.cols_touched.sum()) / acc.shape[1] if two_d and acc.shape[1] else None,
            "delta_fro": math.sqrt(acc.delta_sq),
            "base_fro": math.sqrt(acc.base_sq),
            "ratio": math.sqrt(acc.delta_sq) / math.sqrt(acc.base_sq) if acc.base_sq > 0 else None,
            "max_abs_delta": acc.max_abs,
            "ulp": [int(c) for c in ulp],
            "rank": None,  # the study's (float32 matrix_rank)
            "rank_ratio": None,
            "rank_f64": None,  # metrics.md's float64 numerical rank
            "rank_f64_ratio": None,
            "geometry": None,
            **tensor_precision(acc, self.exact),
        }
        if (acc.want_rank or acc.want_geometry) and two_d and acc.numel:
            record.update(svd_phase.finish_svds(acc, self.device))
        return record
