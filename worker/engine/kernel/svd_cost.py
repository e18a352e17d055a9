"""What the SVD phase will cost, from the shapes alone, before it starts (progress, ETA, the form's estimate).

The phase's work per matrix (m x n, p = max(m, n), r = min(m, n); svd_phase.py says which
factorisation each quantity takes):

    ranks     float64 Gram of Delta (its lower triangle: 10/16 of 2 p r^2 from r = 1024 on,
              matrix products) and its eigenvalues (4/3 r^3) if square; else a Cholesky
              certificate (1/3 r^3, by panels: matrix products) of the Gram matrix of a subset
              of its rows where long (spectra.subset_rows), eigenvalues where it fails not
              counted: it seldom does off the square
    geometry  Gram + top eigenvectors of W and of W~ (2 x (Gram + 6 r^3): lapack.top_eigh, measured
              at ~2/3 of eigh's 9 r^3), projections (4 m n k_max) and Delta's spectrum (Gram +
              4/3 r^3; no certificate: the spectrum is wanted)

Matrix products and LAPACK run at different rates; both are measured once per process on
a small case (`rates`, ~50 ms) and scaled by the flop counts. The estimate is for one core;
the phase runs on every core (`seconds` divides by them).
"""

from __future__ import annotations

import functools
import math
import time

import torch

from worker.engine.kernel import lapack
from worker.engine.kernel.spectra import MIN_TILE, subset_rows

CALIBRATION_SIZE = 384


@functools.lru_cache(maxsize=1)
def rates() -> tuple[float, float]:
    """(matrix-product, LAPACK) float64 flop/s of one thread of this process, measured once."""
    n = CALIBRATION_SIZE
    a = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = a.T @ a
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        for _ in range(3):
            a.T @ a
        gemm = 3 * 2 * n ** 3 / max(time.perf_counter() - t, 1e-6)
        t = time.perf_counter()
        torch.linalg.eigh(g)
        eigh = 9 * n ** 3 / max(time.perf_counter() - t, 1e-6)
    finally:
        torch.set_num_threads(before)
    return gemm, eigh


def matrix_seconds(shape: tuple[int, ...], want_rank: bool, want_geometry: bool,
                   speed: tuple[float, float] | None = None) -> float:
    """Estimated one-core seconds of one matrix's SVD work (0 for anything that takes none)."""
    if len(shape) != 2 or not (want_rank or want_geometry):
        return 0.0
    gemm, lapack_rate = speed or rates()
    m, n = shape
    p, r = max(m, n), min(m, n)
    tiles = 10 / 16 if r >= 2 * MIN_TILE else 1.0
    gram = 2.0 * p * r * r * tiles
    if want_geometry:
        kmax = max(1, math.ceil(0.2 * r))
        products = 3 * gram + 4.0 * m * n * kmax
        eig = 4.0 / 3.0 * r ** 3 + 2 * (6.0 if lapack.available() else 9.0) * r ** 3
    elif p == r:  # no certificate: eigenvalues at once
        products, eig = gram, 4.0 / 3.0 * r ** 3
    else:  # the certificate (a Cholesky by panels: matrix products), of a subset of rows where long
        products = 2.0 * (subset_rows(shape) or p) * r * r * tiles + r ** 3 / 3.0
        eig = 0.0
    return products / gemm + eig / lapack_rate


def seconds(shapes: list[tuple[tuple[int, ...], bool, bool]], cores: int) -> float:
    """Wall seconds of the whole phase on `cores` cores: [(shape, want_rank, want_geometry)]."""
    speed = rates()
    return sum(matrix_seconds(s, r, g, speed) for s, r, g in shapes) / max(1, cores)
