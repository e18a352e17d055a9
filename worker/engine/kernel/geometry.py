"""Update geometry of one matrix: where Delta points relative to the base's singular subspaces.

Every number follows "Update geometry" in docs/METRICS.md. For a base W (m x n),
a tuned W~ and Delta = W~ - W, with W = U S V^T (r = min(m, n) singular triplets) and
k = ceil(q r) for each q in QS:

    stable rank      ||Delta||_F^2 / sigma_1(Delta)^2
    effective rank   exp(H(p)), p_i = sigma_i(Delta) / sum_j sigma_j(Delta)
    energy(k)        ||U_k^T Delta V_k||_F^2 / ||Delta||_F^2   (two-sided)
                     ||U_k^T Delta||_F^2 / ||Delta||_F^2       (left)
                     ||Delta V_k||_F^2 / ||Delta||_F^2         (right)
    baseline(k)      (k/m)(k/n), k/m, k/n: the same shares for a direction-free update
    rotation(k)      principal angles between span U_k(W) and span U_k(W~): mean sin, largest in degrees;
                     the same for V
    drift            ||sigma(W~) - sigma(W)||_2 / ||sigma(W)||_2

The reference is three float64 SVDs per matrix (W and W~ with vectors, Delta values only).
The fast path (factors.py) takes W's and W~'s top-k_max singular vectors (k_max = 20 %) and all
their singular values from float64 Gram eigendecompositions where that is provably accurate,
and Delta's singular values from the spectrum the update ranks already computed (spectra.py);
tests/engine/test_spectra.py holds it to metrics.md's tolerances against the reference.
One projection per side gives every k at once: with L = U_k^T Delta (k x n) and
M = L V_k (k x k), left(k) is the energy of L's first k rows, two-sided(k) that of M's
top-left k x k block, right(k) that of (Delta V_k)'s first k columns.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from worker.engine.kernel.factors import SPAN_BYTES, RowBlocks, top_factors
from worker.engine.kernel.spectra import stable_and_effective

QS = (0.01, 0.05, 0.10, 0.20)
HEADLINE_Q = 0.05  # the one-number views (heatmap, compare columns) use k = 5 %
SPECTRUM_ALL = 1024  # singular values stored in full up to this many; beyond: the top SPECTRUM_TOP
SPECTRUM_TOP = 256  # plus a uniform subsample of the rest, SPECTRUM_ALL values in all
SPECTRUM_DIGITS = 7  # significant digits kept of a stored singular value
# Largest matrix (elements) whose geometry is computed: 2^28 (a 16k x 16k layer, 2 GiB in float64)
# keeps every transformer block's matrices of a 70B model in and leaves out 100k+-row embeddings.
MAX_ELEMENTS = 1 << 28


def ks(m: int, n: int) -> list[int]:
    r = min(m, n)
    return [max(1, math.ceil(q * r - 1e-9)) for q in QS]


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of orthonormal a, b (m x k).

    cos from the singular values of a^T b, sin from those of b - a a^T b; atan2 of the
    pair is accurate near 0 and near 90 degrees alike, where arccos or arcsin alone are not.
    b - a a^T b is taken a few rows at a time into the R of its QR (TSQR: the same singular
    values, as backward-stably), never whole: for an embedding it and its SVD's copies would
    be 0.3 GiB, the SVD phase's peak.
    """
    c = a.T @ b
    cos = torch.linalg.svdvals(c)  # descending
    rows = max(1, SPAN_BYTES // (8 * max(1, a.shape[1])))
    r = None
    for s in range(0, a.shape[0], rows):
        block = b[s:s + rows] - a[s:s + rows] @ c
        r = torch.linalg.qr(block if r is None else torch.cat([r, block]), mode="r").R
    sin = torch.linalg.svdvals(r).flip(0)  # ascending: pairs with descending cos
    return torch.atan2(sin, cos)


def _rotation(a: torch.Tensor, b: torch.Tensor, k_list: list[int]) -> tuple[list[float], list[float]]:
    mean_sin, max_deg = [], []
    for k in k_list:
        theta = _angles(a[:, :k], b[:, :k])
        mean_sin.append(float(torch.sin(theta).mean()))
        max_deg.append(math.degrees(float(theta.max())))
    return mean_sin, max_deg


def side_threads(threads: int) -> int:
    """Threads each side's factorisation gets in a job that holds `threads` (see _both_factors)."""
    return threads // 2 if threads >= 2 else 1


def _both_factors(base: RowBlocks, tuned: RowBlocks, kmax: int, device):
    """top_factors of W and of W~, or (None, None) where either's are not provably accurate.

    The two are independent, and LAPACK's reduction makes poor use of extra threads (half of it
    is matrix-vector products), so a job that holds several threads on a CPU runs the two side by
    side on half of them each (on 2 cores, a 32000 x 2048 pair's: 6.7 -> 5.3 s; a 5632 x 2048
    pair's 2.5 -> 1.8 s). OpenBLAS's thread count is one per process: the SVD phase sets it to
    `side_threads` of the job's threads (analysis._SvdFinisher)."""
    threads = torch.get_num_threads()
    if threads < 2 or torch.device(device).type != "cpu":
        b = top_factors(base, kmax, device)
        t = None if b is None else top_factors(tuned, kmax, device)
        return (None, None) if t is None else (b, t)

    def side(w: RowBlocks):
        torch.set_num_threads(side_threads(threads))  # each thread's own setting
        return top_factors(w, kmax, device)

    # W~ on a helper thread, W on this one meanwhile (a pool of two could run both on one
    # thread, the second after the first, where the first ends before the second is handed out)
    with ThreadPoolExecutor(1, thread_name_prefix="geometry-side") as helper:
        tuned_side = helper.submit(side, tuned)
        try:
            b = side(base)
        finally:
            torch.set_num_threads(threads)
        t = tuned_side.result()
    return (None, None) if b is None or t is None else (b, t)


def spectrum(s: torch.Tensor) -> tuple[list[int] | None, list[float]]:
    """(indices or None for all, values) of a descending spectrum, capped as SPECTRUM_* say."""
    s = s.cpu()
    r = s.numel()
    if r <= SPECTRUM_ALL:
        index = None
    else:
        rest = torch.linspace(SPECTRUM_TOP, r - 1, SPECTRUM_ALL - SPECTRUM_TOP).round().long()
        index = torch.cat([torch.arange(SPECTRUM_TOP), rest]).unique().tolist()
        s = s[index]
    return index, [float(f"{v:.{SPECTRUM_DIGITS}g}") for v in s.tolist()]


def geometry(base: torch.Tensor | list[torch.Tensor], tuned: torch.Tensor | list[torch.Tensor],
             device: torch.device | str = "cpu", delta_sigma: torch.Tensor | None = None,
             reference: bool = False) -> dict | None:
    """The geometry record of one matrix (see the module docstring); None for non-finite weights.

    base, tuned: (m, n) holding float32 values, whole or as the same row blocks in order (the pass's
    rows, 16-bit or float32); on the fast path no float64 copy of either is made, nor a joined one.

    `delta_sigma`: Delta's float64 singular values when already computed (the update ranks');
    `reference`: full float64 SVDs, no shortcut (what the tests hold the fast path to).
    """
    started = time.perf_counter()
    base, tuned = RowBlocks(base), RowBlocks(tuned)
    if [b.shape for b in base.blocks] != [t.shape for t in tuned.blocks]:
        raise ValueError("base and tuned must come as the same row blocks")  # Delta is taken block by block
    if not (base.finite() and tuned.finite()):
        return None
    m, n = base.shape
    k_list = ks(m, n)
    kmax = k_list[-1]
    base_factors, tuned_factors = (None, None) if reference else _both_factors(base, tuned, kmax, device)
    if tuned_factors is not None:
        (u, s, vh), (ut, st, vht) = base_factors, tuned_factors  # u (m, kmax), s (r,), vh (kmax, n)
    else:  # the reference: full float64 SVDs
        u, s, vh = torch.linalg.svd(base.whole(device), full_matrices=False)  # u (m, r), s (r,), vh (r, n)
        ut, st, vht = torch.linalg.svd(tuned.whole(device), full_matrices=False)
        u, vh, ut, vht = u[:, :kmax], vh[:kmax], ut[:, :kmax], vht[:kmax]

    # Delta in float64 a few rows at a time: (base, tuned) hold float32 values, their difference is exact in float64
    def delta_blocks():
        for (a, b), (_, t) in zip(base.spans(device), tuned.spans(device)):
            yield a, t.sub_(b)  # tuned's span buffer, overwritten by the next span anyway

    if delta_sigma is not None:
        sd = delta_sigma.to(torch.float64).cpu()
    else:
        sd = torch.linalg.svdvals(torch.cat([d.clone() for _, d in delta_blocks()])).cpu()  # tests only: the pass gives it
    fro2 = 0.0
    left_rows = torch.zeros(kmax, n, dtype=torch.float64, device=device)  # U_k^T Delta
    right_cols = torch.zeros(kmax, dtype=torch.float64, device=device)  # column energies of Delta V_k
    for a, d in delta_blocks():
        fro2 += float(d.square().sum())
        left_rows.addmm_(u[a:a + d.shape[0]].T, d)
        right_cols += (d @ vh.T).square().sum(dim=0)
    energy: dict[str, list[float | None]]
    if fro2 > 0:
        two = (left_rows @ vh.T).square()  # (kmax, kmax)
        left_cum = left_rows.square().sum(dim=1).cumsum(0)
        right_cum = right_cols.cumsum(0)
        # two-sided(k) = sum of the k x k block: a 2-D prefix sum read on its diagonal
        two_cum = two.cumsum(0).cumsum(1).diagonal()
        energy = {
            "two_sided": [float(two_cum[k - 1]) / fro2 for k in k_list],
            "left": [float(left_cum[k - 1]) / fro2 for k in k_list],
            "right": [float(right_cum[k - 1]) / fro2 for k in k_list],
        }
    else:  # no update: no direction to measure
        energy = {"two_sided": [None] * len(k_list), "left": [None] * len(k_list), "right": [None] * len(k_list)}
    stable_rank, effective_rank = stable_and_effective(sd, fro2)
    u_sin, u_deg = _rotation(u, ut, k_list)
    v_sin, v_deg = _rotation(vh.T, vht.T, k_list)
    s_norm = float(torch.linalg.vector_norm(s))
    index, base_values = spectrum(s)
    _, tuned_values = spectrum(st)
    return {
        "q": list(QS),
        "k": k_list,
        "stable_rank": stable_rank,
        "effective_rank": effective_rank,
        "energy": energy,
        "baseline": {
            "two_sided": [(k / m) * (k / n) for k in k_list],
            "left": [k / m for k in k_list],
            "right": [k / n for k in k_list],
        },
        "rotation": {"u_mean_sin": u_sin, "u_max_deg": u_deg, "v_mean_sin": v_sin, "v_max_deg": v_deg},
        "drift": float(torch.linalg.vector_norm(st - s)) / s_norm if s_norm > 0 else None,
        "spectra": {"rank": len(s), "index": index, "base": base_values, "tuned": tuned_values},
        "seconds": round(time.perf_counter() - started, 4),
    }


# Fields averaged over matrices (element-weighted); lists are averaged position by position.
_SCALARS = ("stable_rank", "effective_rank", "drift")
_LISTS = (("energy", "two_sided"), ("energy", "left"), ("energy", "right"),
          ("baseline", "two_sided"), ("baseline", "left"), ("baseline", "right"),
          ("rotation", "u_mean_sin"), ("rotation", "u_max_deg"),
          ("rotation", "v_mean_sin"), ("rotation", "v_max_deg"))


def weighted(records: list[dict]) -> dict | None:
    """Element-weighted means of the geometry of `records` (those without one are skipped)."""
    rows = [(r["numel"], r["geometry"]) for r in records if r.get("geometry")]
    if not rows:
        return None

    def mean(values: list[tuple[int, float | None]]) -> float | None:
        kept = [(w, v) for w, v in values if v is not None]
        total = sum(w for w, _ in kept)
        return sum(w * v for w, v in kept) / total if total else None

    out: dict = {"q": list(QS), "matrices": len(rows), "numel": sum(w for w, _ in rows),
                 "seconds": round(sum(g.get("seconds") or 0.0 for _, g in rows), 3)}
    for key in _SCALARS:
        out[key] = mean([(w, g[key]) for w, g in rows])
    for group, key in _LISTS:
        out.setdefault(group, {})[key] = [mean([(w, g[group][key][i]) for w, g in rows]) for i in range(len(QS))]
    return out
