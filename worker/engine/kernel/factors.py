"""Top singular subspaces and all singular values of a weight matrix from a float64 Gram eigendecomposition.

Geometry needs, of W (m x n, float64), the leading k_max = ceil(0.2 min(m, n)) singular
vectors on both sides and every singular value. A full SVD with vectors computes all r of
them the expensive way (~3x an eigendecomposition of the r x r Gram matrix here). Instead:

    G = W^T W (or W W^T when m < n; r x r),  G = Q diag(lambda) Q^T  (eigh, float64)
    V_k = Q's top k_max columns, sigma = sqrt(lambda), U_k = orth(W V_k)

Accuracy, provable from the float64 error bounds (Weyl, and the Davis-Kahan gap bound):
- W holds float32 values (the pass's rows), so G is formed from exact products in blocked sums
  (spectra.gram) and each lambda_i is within b = spectra.gram_error_bound of the truth
  (forming G and a backward-stable eigensolver), so sigma_i within b / sigma_i;
- orth(W V_k) by a QR keeps the nested spans span(U_j), j <= k_max, which are all that the
  energies and principal angles read, and is orthonormal to eps64 whatever sigma_k is;
- the subspaces are as well defined as the singular gaps allow, as with the SVD itself.
Used only where sigma_kmax >= MIN_SIGMA_RATIO sigma_1 (U_k from W V_k / sigma loses digits as
sigma_k -> 0) and the singular values' bound keeps spectral drift within DRIFT_ABS; otherwise
`top_factors` returns None and geometry falls back to the full float64 SVD.
"""

from __future__ import annotations

import torch

from worker.engine.kernel.spectra import gram, gram_error_bound

ROWS = 4096  # rows converted to float64 at a time
MIN_SIGMA_RATIO = 1e-4
DRIFT_ABS = 1e-7  # bound on what the singular values' error can move ||sigma~ - sigma|| / ||sigma||


def top_factors(w: torch.Tensor, kmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(U_k (m, kmax), sigma (r,) descending, V_k^T (kmax, n)), float64, of w (float32 values, any float
    dtype), or None where not provably accurate. No float64 copy of w is made."""
    m, n = w.shape
    r = min(m, n)
    if r == 0 or kmax < 1:
        return None
    device = w.device
    g, fro2 = gram(lambda: iter([w]), (m, n), device)  # (r, r), blocked sums of exact products
    lam, q = torch.linalg.eigh(g)  # ascending
    del g
    lam = lam.flip(0)
    lam1 = float(lam[0])
    if lam1 <= 0:
        return None
    # float32 values: exact products (the pass's rows always are; a float64 caller's may not be)
    exact = w.dtype != torch.float64 or bool((w.to(torch.float32).to(torch.float64) == w).all())
    bound = gram_error_bound((m, n), fro2, lam1, exact_products=exact)
    if float(lam[kmax - 1]) < (MIN_SIGMA_RATIO ** 2) * lam1 or float(lam[-1]) <= bound:
        return None
    sigma = lam.clamp(min=0).sqrt()
    err = bound / (lam - bound).sqrt()  # |sigma^_i - sigma_i| <= b / sqrt(lambda^_i - b)
    if 2.0 * float(torch.linalg.vector_norm(err)) / float(torch.linalg.vector_norm(sigma)) > DRIFT_ABS:
        return None
    top = q[:, -kmax:].flip(1).contiguous()  # (r, kmax): the largest first
    if m >= n:  # W V_k = U_k S_k, row block by row block
        other = torch.cat([w[s:s + ROWS].to(torch.float64) @ top for s in range(0, m, ROWS)])  # (m, kmax)
    else:  # W^T U_k = V_k S_k, summed over row blocks
        other = sum(w[s:s + ROWS].to(torch.float64).T @ top[s:s + ROWS] for s in range(0, m, ROWS))  # (n, kmax)
    other, rr = torch.linalg.qr(other)
    other = other * torch.sign(rr.diagonal())  # columns point as W V_k's do (sign kept, span unchanged)
    if m >= n:
        return other, sigma, top.T.contiguous()
    return top, sigma, other.T.contiguous()


def svd_seconds_estimate(m: int, n: int, gflops: float) -> float:
    """Rough float64 cost of `top_factors` (Gram GEMM + eigh) at `gflops`: for progress estimates."""
    r, p = min(m, n), max(m, n)
    return (2.0 * p * r * r + 9.0 * r ** 3) / (gflops * 1e9) if r else 0.0

