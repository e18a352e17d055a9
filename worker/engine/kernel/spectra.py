"""Singular values of Delta, shared by both update ranks and by geometry's stable / effective rank.

Definitions ("Update rank" in docs/METRICS.md), for Delta (m x n), p = max(m, n):

    study rank   torch.linalg.matrix_rank(float32 Delta): sigma32_i > sigma32_1 * p * 2^-23,
                 sigma32 the singular values of a float32 SVD (the study's Table 2)
    float64 rank sigma_i > sigma_1 * p * 2^-52, sigma the singular values in float64

One float64 Gram matrix G serves both ranks and, with geometry, the spectrum behind stable and
effective rank:

0. Without geometry the spectrum itself is not wanted: where one Cholesky factorisation of
   G - tau I completes (`_full_rank_certified`: every sigma_i provably above the study's
   threshold with all its margins), both ranks are min(m, n), at ~1/4 of eigvalsh's cost. The
   common case for a finetuning update: 42 of the bench pair's 58 matrices (not tried on a square
   one, whose smallest singular values sit at that threshold). A long matrix is first
   tried on the Gram matrix of a subset of its rows spread over it (every sigma of Delta is at
   least that of a subset of its rows): 2560 of an MLP matrix's 5632, 12288 of the embedding's 32000.
1. Gram eigenvalues: G = Delta^T Delta (the smaller side, accumulated in float64 block by
   block, so no float64 copy of Delta), lambda = eigvalsh(G), sigma = sqrt(lambda). Forming G
   errs by at most (B + p / B) eps64 ||Delta||_F^2 (blocked sums of exact products, `gram`)
   and a backward-stable eigensolver by r eps64 ||G||_2 (r = min(m, n)), so each lambda is
   within b = ((B + p / B) ||Delta||_F^2 + r sigma_1^2) eps64 (x2 for the second-order terms)
   of the truth (Weyl). This is used only when every sigma_i is provably above the float64 rank
   threshold (lambda_i - b > threshold^2): the matrix is then full rank in float64, and its
   sigma_i err by at most b / sigma_i. A genuinely full-rank finetuning update is the
   common case; Gram costs ~1/5 of a float32 SVD.
2. Otherwise the definition itself: torch.linalg.svdvals in float64 (values only).

The study's float32 rank: LAPACK bounds the error of computed singular values by
p(m, n) eps sigma_1 with "a modestly growing" p (LAPACK Users' Guide 4.9); we take
p = STUDY_GROWTH * sqrt(max(m, n)) (8 sqrt: 6x the largest error measured, 59 eps32 sigma_1 on
a 2048 x 2048 Gaussian; tests/engine/test_spectra.py checks the bound on constructed spectra).
Where no float64 sigma_i lies within that bound (plus the float64 values' own) of the float32
threshold, the count of float64 sigma_i above it is the study's count; where one does, the
study's own float32 `matrix_rank` is run (values only as well).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

EPS32 = 2.0 ** -23  # torch.finfo(torch.float32).eps: matrix_rank's default rtol is max(m, n) * eps
EPS64 = 2.0 ** -52
STUDY_GROWTH = 8.0
GRAM_BLOCK = 256  # length of each stretch of G's sums computed as one product (see gram)
GRAM_TILES = 4  # G's side cut in this many, the products taken for the lower-triangle tiles only
MIN_TILE = 512  # ... but no tile narrower (small products run far below the BLAS's rate)
CHOLESKY_PANEL = 256
# The ranks' certificate of a long matrix first takes the Gram matrix of a subset of its rows
# (columns, if wide) spread over it, of one of these multiples of its width (`subset_rows`), and
# of at most CERTIFY_SUBSET_MAX of them: a long update's smallest singular value is far above the
# study's threshold, and a subset of its rows proves as much at a fraction of the products.
CERTIFY_SUBSET_ROWS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
CERTIFY_SUBSET_MAX = 0.625


def thresholds(shape: tuple[int, int], sigma_max: float) -> tuple[float, float]:
    """(float32, float64) rank thresholds of a matrix of this shape and largest singular value."""
    p = max(shape)
    return sigma_max * p * EPS32, sigma_max * p * EPS64


Blocks = Callable[[], Iterable[torch.Tensor]]  # yields Delta's float32 row blocks in order, each time it is called


def _column_rows(blocks: Blocks, start: int, stop: int) -> Iterable[torch.Tensor]:
    """Delta's row blocks restricted to columns [start, stop). A wide Delta's Gram matrix reads the
    blocks once per stretch of columns: where they are made on demand (`blocks.columns`, as the SVD
    phase makes them from both sides' rows), only those columns are made, not every row 22 times
    over (a 2048 x 5632 Delta: 0.6-0.8 s of one thread)."""
    columns = getattr(blocks, "columns", None)
    return columns(start, stop) if columns is not None else (r[:, start:stop] for r in blocks())


def _blocks(delta) -> tuple[Blocks, tuple[int, int]]:
    rows = [delta] if isinstance(delta, torch.Tensor) else list(delta)
    return (lambda: iter(rows)), (sum(r.shape[0] for r in rows), rows[0].shape[1])


def whole(blocks: Blocks) -> torch.Tensor:
    rows = list(blocks())
    return torch.cat(rows) if len(rows) > 1 else rows[0]


def _sumsq_bound(x: torch.Tensor) -> float:
    """An upper bound on the sum of squares of a float32 tensor from one float32 sum: every term is
    >= 0, so the computed sum is within gamma_N of the true one in whatever order it was added."""
    n = x.numel()
    total = float(torch.dot(x.view(-1), x.view(-1))) if x.is_contiguous() else float(x.square().sum())
    nu = n * EPS32 / 2
    return total / (1.0 - nu / (1.0 - nu)) if nu < 0.25 else math.inf


Take = Callable[[int, int], bool]  # (start, end) of a stretch along the summed side -> whether G takes it


def _stretches(blocks: Blocks, shape: tuple[int, int], buf: torch.Tensor, take: Take | None):
    """Delta's sums cut into GRAM_BLOCK-long stretches, each as a float64 (k, side) matrix X_s in
    `buf` (reused), so that G = sum_s X_s^T X_s: row stretches of a tall Delta, column stretches
    (transposed) of a wide one, assembled from the row blocks without joining them. A stretch that
    `take` declines comes as an upper bound on its sum of squares (a float) instead."""
    m, n = shape
    if m >= n:
        row = 0
        for r in blocks():
            for s in range(0, r.shape[0], GRAM_BLOCK):
                src = r[s:s + GRAM_BLOCK]
                row += src.shape[0]
                if take is not None and not take(row - src.shape[0], row):
                    yield _sumsq_bound(src)
                    continue
                x = buf[:src.shape[0]]
                x.copy_(src)
                yield x
        return
    for s in range(0, n, GRAM_BLOCK):
        e = min(n, s + GRAM_BLOCK)
        if take is not None and not take(s, e):
            yield sum(_sumsq_bound(r) for r in _column_rows(blocks, s, e))
            continue
        x = buf[:e - s]
        row = 0
        for r in _column_rows(blocks, s, e):
            x[:, row:row + r.shape[0]].copy_(r.T)
            row += r.shape[0]
        yield x


def gram(blocks: Blocks, shape: tuple[int, int], device) -> tuple[torch.Tensor, float]:
    """(G of the smaller side in float64, lower triangle only, ||Delta||_F^2) of a float32 matrix
    given as row blocks. Every consumer (eigvalsh, eigh, cholesky) reads the lower triangle.

    A product of two float32 numbers is exact in float64, so G errs only by its sums. Each
    GRAM_BLOCK-long stretch of the sum is a fresh product (error <= B eps |.|, whatever order the
    BLAS adds in) and the stretches are added one by one (<= (p / B) eps |.|): every entry of G
    is within (B + p / B) eps (|Delta|^T |Delta|) of the truth, not p eps as one long product.
    The products are taken for the tiles of G's lower triangle only (10 of 16 with 4 x 4 tiles):
    a BLAS cannot know that X^T X is symmetric (measured: 0.47 s against 0.70 s for one thread
    on a 5632 x 2048 Delta)."""
    g, fro2, _ = partial_gram(blocks, shape, device)
    return g, fro2


def partial_gram(blocks: Blocks, shape: tuple[int, int], device, take: Take | None = None,
                 into: torch.Tensor | None = None) -> tuple[torch.Tensor, float, float]:
    """`gram` of the stretches `take` accepts, added into `into` when given: (G, its trace, an upper
    bound on the sum of squares of the stretches declined). The sums of a subset of stretches make the
    Gram matrix G_S of a subset of Delta's rows (columns, if wide); `into` completes it later."""
    m, n = shape
    side = min(m, n)
    g = torch.zeros(side, side, dtype=torch.float64, device=device) if into is None else into
    width = -(-side // max(1, min(GRAM_TILES, side // MIN_TILE)))
    cuts = [(a, min(side, a + width)) for a in range(0, side, width)]
    part = torch.empty(width, width, dtype=torch.float64, device=device)
    buf = torch.empty(GRAM_BLOCK, side, dtype=torch.float64, device=device)
    rest = 0.0
    for x in _stretches(blocks, shape, buf, take):
        if isinstance(x, float):
            rest += x
            continue
        for i, (a0, a1) in enumerate(cuts):
            for c0, c1 in cuts[:i + 1]:
                tile = part[:a1 - a0, :c1 - c0]
                torch.mm(x[:, a0:a1].T, x[:, c0:c1], out=tile)
                g[a0:a1, c0:c1] += tile
    return g.tril_(), float(g.diagonal().sum()), rest  # the diagonal tiles filled their upper halves too


def _spread(share: float, taken: list[bool]) -> Take:
    """Take stretches evenly over the summed side until `share` of it is taken (at least that much
    of every prefix), recording each decision in `taken` so that the rest can be taken later."""
    count = 0

    def take(start: int, end: int) -> bool:
        nonlocal count
        yes = count < share * end
        count += (end - start) if yes else 0
        taken.append(yes)
        return yes
    return take


def gram_error_bound(shape: tuple[int, int], fro2: float, lam1: float, exact_products: bool = True) -> float:
    """What the eigenvalues of `gram`'s G (by a backward-stable eigensolver) can be off by, at most
    (Weyl): forming G (B + p / B) eps ||Delta||_F^2 (p eps when the entries are wider than float32,
    so that their products round too), the solver r eps ||G||_2; x2 for second order."""
    p, r = max(shape), min(shape)
    sums = GRAM_BLOCK + math.ceil(p / GRAM_BLOCK) if exact_products else p + 1
    return 2.0 * (sums * fro2 + r * max(lam1, 0.0)) * EPS64


def _full_rank_certified(g: torch.Tensor, fro2: float, shape: tuple[int, int], rest: float = 0.0) -> bool:
    """Whether every singular value of Delta provably lies above the study's float32 threshold with
    all its margins (so both ranks are min(m, n), the study's count whatever its SVD's rounding),
    from one Cholesky factorisation of G - tau I instead of G's eigenvalues (~1/4 of eigvalsh's time).

    - sigma_1^2 <= ||G||_inf + e_G (row sums of |G| from its lower triangle; e_G = G's own error as
      in gram_error_bound, rounding of the sums x (1 + 2 r eps)): every threshold and margin is
      taken at this upper bound, so each is an upper bound too.
    - If Cholesky of C = fl(G - s I) completes, R^T R = C + E with |E| <= gamma_{r+1} |R^T| |R|
      (Higham, Accuracy and Stability, Thm 10.3), ||E||_2 <= gamma_{r+1} ||R||_F^2 and
      ||R||_F^2 = trace(C + E) <= trace(G) / (1 - gamma): lambda_min(G) >= s - ||E||_2 - eps |G_ii|.
    With s = tau + e_G + e_C (e_C = 2 (r + 2) eps ||Delta||_F^2 >= both), lambda_min(G_true) > tau.

    `g` may be the Gram matrix G_S of a subset S of the summed side (`rest` > 0 bounds the sum of
    squares left out, `fro2` is then the whole matrix's): G = G_S + G_R with G_R >= 0, so
    lambda_min(G) >= lambda_min(G_S) and sigma_1^2 <= ||G_S||_inf + ||Delta_R||_F^2."""
    p, r = max(shape), min(shape)
    if not math.isfinite(fro2) or fro2 <= 0:
        return False
    e_g = gram_error_bound(shape, fro2, 0.0)  # forming G only: no eigensolver runs here
    # row sums of |G| from its lower triangle (gram leaves the strict upper one zero), no |G| copy
    rows = torch.linalg.vector_norm(g, 1, dim=1) + torch.linalg.vector_norm(g, 1, dim=0) - g.diagonal().abs()
    top2 = (float(rows.max()) + e_g) * (1.0 + 2.0 * r * EPS64) + rest
    if rest:
        top2 = min(top2, fro2 * (1.0 + 2.0 * p * r * EPS64) + e_g)
    smax = math.sqrt(top2)
    thr32, _ = thresholds(shape, smax)
    margin = STUDY_GROWTH * math.sqrt(p) * smax * EPS32
    tau = (thr32 + margin + thr32 * margin / smax) ** 2
    shift = tau + e_g + 2.0 * (r + 2) * fro2 * EPS64
    c = g.clone()
    c.diagonal().sub_(shift)
    return _cholesky_completes(c)


def _cholesky_completes(c: torch.Tensor) -> bool:
    """Whether the Cholesky factorisation of c (read from its lower triangle, which it leaves
    holding the factor) runs to its end. On the CPU by panels of CHOLESKY_PANEL, right-looking:
    the trailing updates are matrix products at the BLAS's full rate, where LAPACK's potrf on one
    thread runs at a quarter of it (measured at 2048: 0.090 s against 0.157 s). The same operations
    in another order (each r_ij is still one inner product, summed in some order), so Theorem
    10.3's bound holds as it is."""
    if c.device.type != "cpu":
        info = torch.empty((), dtype=torch.int32, device=c.device)
        torch.linalg.cholesky_ex(c, out=(c, info))
        return int(info) == 0
    n = c.shape[0]
    for j in range(0, n, CHOLESKY_PANEL):
        e = min(n, j + CHOLESKY_PANEL)
        d, info = torch.linalg.cholesky_ex(c[j:e, j:e])
        if int(info):
            return False
        c[j:e, j:e].copy_(d)
        if e < n:
            panel = c[e:, j:e]
            panel.copy_(torch.linalg.solve_triangular(d.T, panel, upper=True, left=False))  # P L_jj^-T
            for i in range(e, n, CHOLESKY_PANEL):  # the trailing lower triangle, a row of tiles at a time
                ie = min(n, i + CHOLESKY_PANEL)
                c[i:ie, e:ie].addmm_(panel[i - e:ie - e], panel[:ie - e].T, alpha=-1.0)
    return True


def subset_rows(shape: tuple[int, int]) -> int | None:
    """How many rows (columns, if wide) of a long matrix the certificate first tries, or None to take
    them all. Without the whole G, sigma_1 is bounded by ||Delta||_F, which for an update spread over
    the matrix exceeds it ~sqrt(p) times and so raises the threshold to prove against; the subset is
    sized so that an update with independent entries clears it 4x in the square (the smallest
    singular value of s such rows is ~(1 - sqrt(r / s)) sqrt(s) of an entry's size). Any subset
    gives a valid certificate; this choice only decides how often the whole G is needed after all."""
    p, r = max(shape), min(shape)
    need = 4.0 * p ** 3 * r * EPS32 ** 2
    for factor in CERTIFY_SUBSET_ROWS:
        s = math.ceil(factor * r)
        if s > CERTIFY_SUBSET_MAX * p:
            return None
        if (1.0 - math.sqrt(r / s)) ** 2 * s >= need:
            return s
    return None


def _certified_gram(blocks: Blocks, shape: tuple[int, int], device) -> tuple[torch.Tensor | None, float, bool]:
    """(G, ||Delta||_F^2, whether both ranks are certified full): the whole G unless the Gram matrix
    of a subset of a long matrix's rows already certified it (then None)."""
    p, r = max(shape), min(shape)
    rows = subset_rows(shape)  # None for a square matrix too
    if rows is None:
        g, fro2 = gram(blocks, shape, device)
        # A square update's smallest singular values sit at the study's threshold or below it (a
        # random n x n matrix's at ~sigma_1 / 2n, the threshold at sigma_1 n 2^-23: equal at
        # n = 2048): a Cholesky there fails near its end, after all its work (16 of 16 on the
        # bench pair). Its eigenvalues decide at once.
        return g, fro2, p != r and _full_rank_certified(g, fro2, shape)
    taken: list[bool] = []
    g, fro2, rest = partial_gram(blocks, shape, device, _spread(rows / p, taken))
    if _full_rank_certified(g, fro2 + rest, shape, rest=rest):
        return None, fro2 + rest, True
    left = iter(taken)  # the rows the subset left out complete G (the whole may prove what a part cannot)
    g, fro2, _ = partial_gram(blocks, shape, device, lambda start, end: not next(left), into=g)
    return g, fro2, _full_rank_certified(g, fro2, shape)


def delta_spectrum(delta: torch.Tensor | list[torch.Tensor] | Blocks, device: torch.device | str = "cpu",
                   want_study: bool = True, shape: tuple[int, int] | None = None, need_sigma: bool = True) -> dict:
    """Ranks and singular values of Delta (float32; given whole, as a list of row blocks in order, or
    as a callable yielding them, with `shape`: then no whole copy is made unless a fallback needs one).

    Returns {"rank": study rank or None, "rank_f64", "sigma" (float64, descending, on the CPU; None
    where not needed and both ranks were certified full without it), "values": "gram" | "svd64" |
    "cholesky", "study": "reused" | "svd32" | "cholesky" | None, "seconds"}.
    """
    started = time.perf_counter()
    blocks, shape = (delta, shape) if callable(delta) else _blocks(delta)
    m, n = shape
    r = min(m, n)
    out = {"rank": None, "rank_f64": 0, "sigma": torch.zeros(r, dtype=torch.float64), "values": "gram",
           "study": None}
    sigma = err = None
    if r:
        g, fro2, certified = _certified_gram(blocks, shape, device) if not need_sigma else (
            *gram(blocks, shape, device), False)
        if certified:
            out.update(rank=r if want_study else None, rank_f64=r, sigma=None, values="cholesky",
                       study="cholesky" if want_study else None, seconds=round(time.perf_counter() - started, 4))
            return out
        finite = math.isfinite(fro2)  # near-float32-max entries (non-finite updates) overflow G
        lam = torch.linalg.eigvalsh(g).flip(0) if finite else None  # descending
        del g
        lam1 = float(lam[0]) if finite else math.inf
        bound = gram_error_bound(shape, fro2, lam1)
        if finite and lam1 > bound:
            _, thr64 = thresholds(shape, math.sqrt(lam1 + bound))  # an upper bound on the threshold
            if float(lam[-1]) - bound > thr64 ** 2:
                sigma = lam.clamp(min=0).sqrt().cpu()
                # |sigma^ - sigma| <= b / (sigma^ + sigma) <= b / sqrt(lambda^ - b)
                err = bound / (lam.cpu() - bound).sqrt()
        if sigma is None:
            sigma = torch.linalg.svdvals(whole(blocks).to(device=device, dtype=torch.float64)).cpu()
            # a backward-stable float64 SVD: r sigma_1 eps64 (far below every float32 margin)
            err = torch.full_like(sigma, 4.0 * math.sqrt(max(m, n)) * float(sigma[0]) * EPS64)
            out["values"] = "svd64"
    out["sigma"] = sigma if sigma is not None else out["sigma"]
    smax = float(sigma[0]) if r else 0.0
    if smax > 0:
        thr32, thr64 = thresholds(shape, smax)
        out["rank_f64"] = int((sigma > thr64).sum())
        if want_study:
            margin = STUDY_GROWTH * math.sqrt(max(m, n)) * smax * EPS32
            # the float32 threshold moves with float32's sigma_1 too (by at most p eps32 margin)
            near = (sigma - thr32).abs() <= margin + err + thr32 * margin / smax
            if bool(near.any()):
                out["rank"] = int(torch.linalg.matrix_rank(whole(blocks).to(device=device, dtype=torch.float32)))
                out["study"] = "svd32"
            else:
                out["rank"] = int((sigma > thr32).sum())
                out["study"] = "reused"
    elif want_study and r:
        out["rank"], out["study"] = 0, "reused"  # Delta = 0: no singular value above any threshold
    out["seconds"] = round(time.perf_counter() - started, 4)
    return out


def stable_and_effective(sigma: torch.Tensor, fro2: float) -> tuple[float | None, float | None]:
    """Stable rank ||Delta||_F^2 / sigma_1^2 and effective rank exp(H(sigma / sum sigma)); None for Delta = 0."""
    if fro2 <= 0 or not sigma.numel() or float(sigma[0]) <= 0:
        return None, None
    p = sigma[sigma > 0] / sigma.sum()
    return fro2 / float(sigma[0]) ** 2, math.exp(float(-(p * p.log()).sum()))


def rank_summary(records: list[dict]) -> dict:
    """Both ranks over matrices: unweighted means (the study's figure) and element-weighted means."""
    out: dict = {}
    for key, ratio in (("study", "rank_ratio"), ("f64", "rank_f64_ratio")):
        rows = [(r[ratio], r["numel"]) for r in records if r.get(ratio) is not None]
        total = sum(w for _, w in rows)
        out[key] = {
            "matrices": len(rows),
            "mean": sum(v for v, _ in rows) / len(rows) if rows else None,
            "weighted_mean": sum(v * w for v, w in rows) / total if total else None,
        }
    return out
