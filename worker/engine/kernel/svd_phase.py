"""The SVD phase of one matrix: both update ranks and geometry from shared factorisations.

What each quantity needs, and what it gets (metrics.md "Update rank", "Update geometry"):

    float64 rank, stable rank, effective rank   Delta's singular values, once (spectra.py:
                                                float64 Gram eigenvalues where provably exact
                                                enough, else a values-only float64 SVD); the
                                                ranks alone: none where a shifted Cholesky of
                                                the Gram matrix proves both full
    the study's float32 rank                    the same values where they provably give its
                                                count, else its own values-only float32 SVD
    energies, rotations, drift                  W's and W~'s top 20 % singular vectors and all
                                                their values (factors.py: float64 Gram eigh,
                                                else the full float64 SVD)

No factorisation with vectors is ever taken of Delta, and none of W or W~ for the ranks.
The rows arrive as float32 blocks from the pass (exact for 16- and 8-bit inputs) and are not
concatenated unless a fallback SVD needs the whole matrix.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from worker.engine.kernel.bins import rank_delta
from worker.engine.kernel.geometry import geometry, ks
from worker.engine.kernel.spectra import delta_spectrum


@functools.lru_cache(maxsize=1)
def _fixed_mmap_threshold() -> bool:
    """Large buffers straight from mmap and back to the system when freed (glibc; elsewhere nothing).

    glibc raises its mmap threshold to the size of each freed mmapped block (up to 32 MiB), after
    which the phase's Gram matrices, float64 row blocks and LAPACK work arrays come from heap
    arenas that threads keep: measured on the bench pair, peak RSS 1.49 GiB with --rank all
    against 0.86 GiB with the threshold fixed at 1 MiB (setting it turns the adjustment off)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


_fixed_mmap_threshold()  # at import, before the pass's first allocations (later it leaves arenas grown)


def kept_bytes(shape: tuple[int, int], compare_dtype: torch.dtype, want_geometry: bool) -> int:
    """What the pass keeps of a matrix for its SVDs: both sides' rows with geometry (16-bit ones as
    they are, others as float32: Kernel.measure), else Delta's rows in float32."""
    m, n = shape
    if want_geometry:
        return 2 * m * n * (2 if compare_dtype in (torch.bfloat16, torch.float16) else 4)
    return 4 * m * n


def job_bytes(shape: tuple[int, int], kept: int, want_geometry: bool) -> int:
    """About the most memory `finish_svds` holds at once for a matrix: the `kept` rows, the Gram
    matrix with its eigenvectors and, with geometry, both sides' U_k in float64."""
    m, n = shape
    held = kept + 2 * 8 * min(m, n) ** 2
    if want_geometry:
        held += 2 * 8 * max(m, n) * ks(m, n)[-1]
    return held


class _DeltaRows:
    """Delta's float32 row blocks made from both sides' kept rows each time they are read (never
    all at once), or only some of their columns (`spectra._column_rows`)."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        self.pairs = pairs

    def __call__(self):
        return (rank_delta(b, t) for b, t in self.pairs)

    def columns(self, start: int, stop: int):
        return (rank_delta(b[:, start:stop], t[:, start:stop]) for b, t in self.pairs)


def finish_svds(acc, device: torch.device | str) -> dict:
    """Record fields of one matrix's rank and geometry (acc: a TensorAccumulator that wanted them)."""
    out: dict = {}
    m, n = acc.shape
    pairs = acc.geometry_rows  # (base, tuned) row blocks when geometry is wanted
    if pairs:  # Delta from them, a block at a time (correctly rounded like the pass's own rows)
        spec = delta_spectrum(_DeltaRows(pairs), device, want_study=acc.want_rank, shape=(m, n))
    elif acc.rank_rows:  # no geometry: no stable or effective rank, so the spectrum only where the ranks need it
        spec = delta_spectrum(acc.rank_rows, device, want_study=acc.want_rank, need_sigma=False)
    else:
        spec = None
    acc.rank_rows.clear()
    if acc.want_rank and spec is not None:
        r = min(acc.shape)
        out.update(rank=spec["rank"], rank_ratio=spec["rank"] / r, rank_f64=spec["rank_f64"],
                   rank_f64_ratio=spec["rank_f64"] / r,
                   rank_path={"values": spec["values"], "study": spec["study"]})
    if acc.want_geometry:  # the row blocks as the pass kept them, never joined
        base, tuned = [b for b, _ in acc.geometry_rows], [t for _, t in acc.geometry_rows]
        acc.geometry_rows.clear()
        out["geometry"] = geometry(base, tuned, device, delta_sigma=spec["sigma"] if spec else None)
    return out
