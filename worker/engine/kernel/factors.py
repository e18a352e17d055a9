"""Top singular subspaces and all singular values of a weight matrix from a float64 Gram eigendecomposition.

Geometry needs, of W (m x n, float64), the leading k_max = ceil(0.2 min(m, n)) singular
vectors on both sides and every singular value. A full SVD with vectors computes all r of
them the expensive way (~3x an eigendecomposition of the r x r Gram matrix here). Instead:

    G = W^T W (or W W^T when m < n; r x r),  G = Q diag(lambda) Q^T  (float64)
    V_k = Q's top k_max columns, sigma = sqrt(lambda), U_k = orth(W V_k)

with every lambda but only those k_max columns of Q computed (lapack.top_eigh).

Accuracy, provable from the float64 error bounds (Weyl, and the Davis-Kahan gap bound):
- W holds float32 values (the pass's rows), so G is formed from exact products in blocked sums
  (spectra.gram) and each lambda_i is within b = spectra.gram_error_bound of the truth
  (forming G and a backward-stable eigensolver), so sigma_i within b / sigma_i;
- orth(W V_k) by a QR with a positive diagonal keeps the nested spans span(U_j), j <= k_max,
  which are all that the energies and principal angles read. It is taken in place by CholeskyQR
  (A <- A R^-1, R the Cholesky factor of A^T A) of A = W V_k S_k^-1, whose columns are orthonormal
  but for the eigensolver's error: one pass then leaves Q orthonormal to O(eps64), a second runs
  where A^T A strays from I (CholeskyQR2: O(eps64) for cond(A) up to ~eps64^-1/2, Yamamoto et
  al. 2015, and cond(W V_k) = sigma_1 / sigma_kmax <= 1 / MIN_SIGMA_RATIO here); a Householder QR
  would hold a second (m x k_max) copy (0.1 GiB for an embedding);
- the subspaces are as well defined as the singular gaps allow, as with the SVD itself.
Used only where sigma_kmax >= MIN_SIGMA_RATIO sigma_1 (U_k from W V_k / sigma loses digits as
sigma_k -> 0); otherwise `top_factors` returns None and geometry falls back to the full float64
SVD. Where the singular values' bound does not keep spectral drift within DRIFT_ABS (the smallest
sigma_i of a square base), the vectors stand and the values come from a values-only float64 SVD.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from worker.engine.kernel.lapack import top_eigh
from worker.engine.kernel.spectra import gram, gram_error_bound

SPAN_BYTES = 16 << 20  # float64 bytes of the rows widened at a time (the SVD phase's peak memory, with U_k)
MIN_SIGMA_RATIO = 1e-4
ONE_PASS_DEVIATION = 0.125  # ||a^T a - I||_F up to which one CholeskyQR pass is enough (_orthonormalise)
DRIFT_ABS = 1e-7  # bound on what the singular values' error can move ||sigma~ - sigma|| / ||sigma||


class RowBlocks:
    """A matrix held as row blocks in order (the pass's pieces, 16-bit or float32), never joined:
    an embedding's float64 copy alone would be 0.5 GiB. `spans` widens a few rows at a time."""

    def __init__(self, blocks: torch.Tensor | list[torch.Tensor]):
        self.blocks = [blocks] if isinstance(blocks, torch.Tensor) else list(blocks)
        self.shape = (sum(b.shape[0] for b in self.blocks), self.blocks[0].shape[1])
        self.dtype = self.blocks[0].dtype

    def spans(self, device, dtype=torch.float64) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows as `dtype` on `device`) in order, SPAN_BYTES of float64 or fewer each, in
        one buffer that the next span overwrites (the caller may change it, and must be done with
        it before asking for the next): a fresh 16 MiB each time cost ~4 K page faults a span."""
        rows = max(1, SPAN_BYTES // (8 * max(1, self.shape[1])))
        buf = torch.empty(min(rows, self.shape[0]), self.shape[1], dtype=dtype, device=device)
        start = 0
        for b in self.blocks:
            for s in range(0, b.shape[0], rows):
                src = b[s:s + rows]
                out = buf[:src.shape[0]]
                out.copy_(src)
                yield start + s, out
            start += b.shape[0]

    def whole(self, device, dtype=torch.float64) -> torch.Tensor:
        return torch.cat([b.to(device=device, dtype=dtype) for b in self.blocks])

    def finite(self) -> bool:
        """No inf or NaN: min and max propagate NaN, so both are finite exactly when every entry is
        (0.2 ms for a 1 M-element bf16 block, where isfinite(b).all()'s bool copy took 3.1 ms)."""
        for b in self.blocks:
            if b.numel():
                lo, hi = torch.aminmax(b)
                if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                    return False
        return True

    def float32_values(self) -> bool:
        """Every entry a float32 value (always for the pass's rows; a float64 caller's may not be)."""
        return all(b.dtype != torch.float64 or bool((b.to(torch.float32).to(torch.float64) == b).all())
                   for b in self.blocks)


def top_factors(w: torch.Tensor | RowBlocks, kmax: int,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(U_k (m, kmax), sigma (r,) descending, V_k^T (kmax, n)), float64 on `device` (default: w's), of w
    (float32 values, any float dtype; a tensor or its row blocks), or None where not provably accurate.
    No float64 copy of w is made."""
    w = w if isinstance(w, RowBlocks) else RowBlocks(w)
    m, n = w.shape
    r = min(m, n)
    if r == 0 or kmax < 1:
        return None
    device = w.blocks[0].device if device is None else device
    g, fro2 = gram(lambda: iter(w.blocks), (m, n), device)  # (r, r), blocked sums of exact products
    lam, q = top_eigh(g, kmax, overwrite=True)  # all eigenvalues ascending, the top kmax vectors
    del g
    lam = lam.flip(0)
    lam1 = float(lam[0])
    if lam1 <= 0:
        return None
    bound = gram_error_bound((m, n), fro2, lam1, exact_products=w.float32_values())
    if float(lam[kmax - 1]) < (MIN_SIGMA_RATIO ** 2) * lam1:
        return None  # sigma_k near zero: no U_k from W V_k
    sigma = lam.clamp(min=0).sqrt()
    err = sigma_errors(lam, bound)
    if 2.0 * float(torch.linalg.vector_norm(err)) / float(torch.linalg.vector_norm(sigma)) > DRIFT_ABS:
        # The top vectors stand (sigma_k is far from zero); the smallest singular values do not, for
        # the drift (a square base's sigma_min is ~sigma_1 / 2n): all values from a values-only
        # float64 SVD, the definition. At 2048 x 2048: 2.5 s, where the full SVDs this fell back to
        # took 5.3 s a side after eigh's work was thrown away.
        sigma = torch.linalg.svdvals(w.whole(device))
    top = q.flip(1).contiguous()  # (r, kmax): the largest first
    del q
    other = torch.zeros(max(m, n), kmax, dtype=torch.float64, device=device)  # W V_k (m, kmax) or W^T U_k (n, kmax)
    for s, rows in w.spans(device):
        if m >= n:  # W V_k = U_k S_k, row block by row block
            torch.mm(rows, top, out=other[s:s + rows.shape[0]])
        else:  # W^T U_k = V_k S_k, summed over row blocks
            other.addmm_(rows.T, top[s:s + rows.shape[0]])
    other /= sigma[:kmax]  # U_k (V_k) up to rounding: nearly orthonormal already, see _orthonormalise
    if not _orthonormalise(other):
        return None
    if m >= n:
        return other, sigma, top.T.contiguous()
    return top, sigma, other.T.contiguous()


def sigma_errors(lam: torch.Tensor, bound: float) -> torch.Tensor:
    """Bounds on |sqrt(max(lambda^_i, 0)) - sigma_i| where every |lambda^_i - sigma_i^2| <= bound (> 0).

    sigma^_i - sigma_i = (lambda^_i - lambda_i) / (sigma^_i + sigma_i) with sigma_i >= sqrt(lambda^_i - b),
    and |sqrt x - sqrt y| <= sqrt |x - y| covers the values within b of zero: finite for every i,
    and half of b / sqrt(lambda^_i - b) (all that the bound read before) for the others."""
    sigma = lam.clamp(min=0).sqrt()
    return torch.minimum(bound / (sigma + (lam - bound).clamp(min=0).sqrt()), torch.tensor(bound, dtype=lam.dtype).sqrt())


def _orthonormalise(a: torch.Tensor) -> bool:
    """a (p, k) <- the Q of its QR with a positive diagonal (columns point as a's did), in place, by
    CholeskyQR a few rows at a time; False where a^T a is not numerically positive definite.

    One pass leaves Q^T Q - I of order kappa(a)^2 eps, times a low-degree polynomial in p and k
    (Yamamoto et al. 2015), so a second pass (CholeskyQR2) is what makes an ill-conditioned a
    orthonormal. The a here is W V_k S_k^-1: its columns are orthonormal but for the eigensolver's
    error, so d = ||a^T a - I||_F is tiny and kappa(a)^2 <= (1 + d) / (1 - d); up to d = 1/8
    (kappa^2 <= 1.29) the one pass leaves what CholeskyQR2's second pass would, and the second
    runs only above it (measured: d ~1e-12 before the pass and ~1e-14 after it on 2048-wide bf16
    matrices)."""
    rows = max(1, SPAN_BYTES // (8 * max(1, a.shape[1])))
    for _ in range(2):
        gram_a = a.T @ a
        r, info = torch.linalg.cholesky_ex(gram_a, upper=True)
        if int(info):
            return False
        for s in range(0, a.shape[0], rows):
            block = a[s:s + rows]
            block.copy_(torch.linalg.solve_triangular(r, block, upper=True, left=False))
        gram_a.diagonal().sub_(1.0)
        if float(torch.linalg.matrix_norm(gram_a)) <= ONE_PASS_DEVIATION:
            break
    return True
