"""The SVD phase of one matrix: both update ranks and geometry from shared factorisations.

What each quantity needs, and what it gets (metrics.md "Update rank", "Update geometry"):

    float64 rank, stable rank, effective rank   Delta's singular values, once (spectra.py:
                                                float64 Gram eigenvalues where provably exact
                                                enough, else a values-only float64 SVD)
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

import torch

from worker.engine.kernel.geometry import geometry
from worker.engine.kernel.spectra import delta_spectrum


def finish_svds(acc, device: torch.device | str) -> dict:
    """Record fields of one matrix's rank and geometry (acc: a TensorAccumulator that wanted them)."""
    out: dict = {}
    rows = acc.rank_rows
    if not rows and acc.want_geometry:  # geometry alone: Delta from the rows geometry keeps
        rows = [t - b for b, t in acc.geometry_rows]  # float32, correctly rounded like the pass's
    spec = None
    if rows:
        spec = delta_spectrum(rows, device, want_study=acc.want_rank)
        rows.clear()
        acc.rank_rows.clear()
    if acc.want_rank and spec is not None:
        r = min(acc.shape)
        out.update(rank=spec["rank"], rank_ratio=spec["rank"] / r, rank_f64=spec["rank_f64"],
                   rank_f64_ratio=spec["rank_f64"] / r,
                   rank_path={"values": spec["values"], "study": spec["study"]})
    if acc.want_geometry:
        base = torch.cat([b for b, _ in acc.geometry_rows])
        tuned = torch.cat([t for _, t in acc.geometry_rows])
        acc.geometry_rows.clear()
        out["geometry"] = geometry(base, tuned, device, delta_sigma=spec["sigma"] if spec else None)
    return out
