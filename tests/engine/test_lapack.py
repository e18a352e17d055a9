"""The subset eigensolver behind geometry (OpenBLAS's dsytrd / dsterf / dstemr / dormtr through
ctypes) against torch.linalg.eigh, and the singular values' error bound that geometry reads."""

from __future__ import annotations

import threading

import pytest
import torch

from worker.engine.kernel import factors, lapack, spectra
from worker.engine.kernel import geometry as G


def _symmetric(r: int, eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * eigenvalues) @ q.T


def _same_top_subspace(got: torch.Tensor, want: torch.Tensor) -> float:
    """sin of the largest principal angle between the column spans of two orthonormal matrices."""
    return float(torch.linalg.svdvals(got - want @ (want.T @ got)).max())


def test_the_project_installs_the_library_it_calls():
    # scipy-openblas64 is a product dependency: without it geometry silently takes the slower eigh
    assert lapack.available()


SPECTRA = {
    "spread": lambda r: torch.logspace(0, -6, r, dtype=torch.float64),
    "gram of a random matrix": None,  # filled in below: a Marchenko-Pastur bulk, dense near k
    # four tight clusters (spread 1e-9 within each), in r / 4 long runs
    "clusters": lambda r: torch.tensor([9.0, 5.0, 2.0, 1.0], dtype=torch.float64)[torch.arange(r) * 4 // r]
    - torch.arange(r, dtype=torch.float64) * 1e-9,
}


@pytest.mark.parametrize("r, k", [(2, 1), (40, 40), (300, 60), (301, 1)])
@pytest.mark.parametrize("kind", sorted(SPECTRA))
def test_top_eigh_is_eigh_for_all_values_and_the_top_vectors(r, k, kind):
    if kind == "gram of a random matrix":
        a = torch.randn(3 * r, r, generator=torch.Generator().manual_seed(r), dtype=torch.float64)
        g = a.T @ a
    else:
        g = _symmetric(r, SPECTRA[kind](r).flip(0), seed=r)
    lam_ref, q_ref = torch.linalg.eigh(g)
    lam, q = lapack.top_eigh(g, k)
    assert lam.shape == (r,) and q.shape == (r, k)
    assert float((lam - lam_ref).abs().max()) <= 4 * r * 2.0 ** -52 * float(lam_ref[-1])  # backward stable
    assert float((q.T @ q - torch.eye(k, dtype=torch.float64)).abs().max()) < 1e-12
    residual = g @ q - q * lam[r - k:]  # eigenpairs, the largest k in ascending order
    assert float(residual.abs().max()) < 1e-12 * float(lam_ref[-1])
    cut = lam_ref[r - k] - (lam_ref[r - k - 1] if k < r else 0.0)
    if cut > 1e-6 * lam_ref[-1]:  # a cluster cut at k has no one top-k subspace
        assert _same_top_subspace(q, q_ref[:, r - k:]) < 1e-10


def test_top_eigh_reads_the_lower_triangle_and_overwrites_only_when_asked():
    g = _symmetric(64, torch.linspace(1, 2, 64, dtype=torch.float64), seed=3)
    lower = g.tril()
    garbage = lower + torch.triu(torch.full_like(g, 7.0), 1)
    kept = garbage.clone()
    lam, q = lapack.top_eigh(garbage, 8)
    assert torch.equal(garbage, kept)  # not asked to overwrite: untouched
    lam2, q2 = lapack.top_eigh(garbage, 8, overwrite=True)  # the upper triangle is never read
    assert torch.equal(lam, lam2) and torch.equal(q, q2)
    assert torch.allclose(lam, torch.linalg.eigvalsh(g), rtol=0, atol=1e-13)


def test_without_the_library_top_eigh_is_torchs_eigh(monkeypatch):
    g = _symmetric(50, torch.logspace(0, -3, 50, dtype=torch.float64), seed=5)
    lam, q = lapack.top_eigh(g, 10)
    monkeypatch.setattr(lapack, "_lapack", lambda: None)
    lam_t, q_t = lapack.top_eigh(g, 10)
    assert torch.allclose(lam, lam_t, rtol=0, atol=1e-14) and _same_top_subspace(q, q_t) < 1e-12


def test_two_threads_call_it_at_once_and_get_what_one_gets():
    """The SVD phase runs two jobs side by side, each calling the library (which releases the GIL)."""
    lapack.set_threads(1)
    gs = [_symmetric(200, torch.logspace(0, -4, 200, dtype=torch.float64), seed=s) for s in (1, 2)]
    alone = [lapack.top_eigh(g, 40) for g in gs]
    together: list = [None, None]

    def run(i: int) -> None:
        for _ in range(5):
            together[i] = lapack.top_eigh(gs[i], 40)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (lam, q), (lam2, q2) in zip(alone, together):
        assert torch.equal(lam, lam2) and torch.equal(q, q2)


def test_geometry_takes_the_subset_solver_not_eigh(monkeypatch):
    def no_eigh(*args, **kwargs):
        raise AssertionError("torch.linalg.eigh ran")

    base = torch.randn(120, 80, generator=torch.Generator().manual_seed(1))
    tuned = base + 1e-3 * torch.randn(120, 80, generator=torch.Generator().manual_seed(2))
    ref = G.geometry(base, tuned, reference=True)
    monkeypatch.setattr(torch.linalg, "eigh", no_eigh)
    assert factors.top_factors(base, G.ks(120, 80)[-1]) is not None
    fast = G.geometry(base, tuned)
    assert fast["energy"]["two_sided"] == pytest.approx(ref["energy"]["two_sided"], abs=1e-9)
    assert fast["rotation"]["u_mean_sin"] == pytest.approx(ref["rotation"]["u_mean_sin"], abs=1e-9)


@pytest.mark.parametrize("decades", [3, 7, 12])
def test_sigma_error_bound_holds_for_every_value_down_to_below_the_gram_error(decades):
    """geometry's drift reads these bounds: each Gram-derived sigma within its bound of the float64
    SVD's, including the tail below the Gram matrix's own error (there: sqrt(b), not infinity)."""
    n = 96
    s = torch.logspace(0, -decades, n, dtype=torch.float64)
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(decades), dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(decades + 1), dtype=torch.float64))
    w = ((q1 * s) @ q2.T).float()
    g, fro2 = spectra.gram(lambda: iter([w]), (n, n), "cpu")
    lam = torch.linalg.eigvalsh(g).flip(0)
    bound = spectra.gram_error_bound((n, n), fro2, float(lam[0]))
    err = factors.sigma_errors(lam, bound)
    truth = torch.linalg.svdvals(w.double())
    assert bool(torch.isfinite(err).all())
    assert bool(((lam.clamp(min=0).sqrt() - truth).abs() <= err).all())
    assert float(err.max()) <= bound ** 0.5 * (1 + 1e-12)
