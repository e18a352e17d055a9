"""Both update ranks and the fast SVD phase against float64 SVDs on constructed spectra (metrics.md "Update rank")."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from worker.engine import AnalysisOptions, analyze, open_source, parse_source, plan_analysis
from worker.engine.kernel import bins, factors, spectra
from worker.engine.kernel import geometry as G
from worker.engine.svd_estimate import estimate


def _with_spectrum(m: int, n: int, s: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A float32 matrix U diag(s) V^T (U, V random orthonormal, float64 before the one rounding)."""
    gen = torch.Generator().manual_seed(seed)
    r = s.numel()
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    return ((u * s.to(torch.float64)) @ v.T).float()


def _reference(d: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(study rank, float64 rank, float64 singular values): the definitions, brute force."""
    s64 = torch.linalg.svdvals(d.double())
    p = max(d.shape)
    f64 = int((s64 > s64[0] * p * 2.0 ** -52).sum()) if float(s64[0]) > 0 else 0
    return int(torch.linalg.matrix_rank(d)), f64, s64


def test_square_full_rank_update_with_a_long_tail_reads_lower_under_the_studys_rule():
    # 384 x 384, singular values log-spaced over 5.5 decades: genuinely full rank, yet
    # float32's threshold (sigma_1 * 384 * 2^-23 = 4.6e-5 sigma_1) cuts the tail.
    d = _with_spectrum(384, 384, torch.logspace(0, -5.5, 384, dtype=torch.float64))
    study, f64, s64 = _reference(d)
    got = spectra.delta_spectrum(d)
    assert (got["rank"], got["rank_f64"]) == (study, f64) == (303, 384)
    assert got["study"] == "svd32"  # singular values sit at the float32 threshold: it pays for its own
    assert torch.allclose(got["sigma"], s64, rtol=0, atol=1e-10 * float(s64[0]))  # Gram: ~1e-11 measured


def test_well_conditioned_rectangular_update_reuses_one_gram_spectrum():
    d = _with_spectrum(300, 120, torch.linspace(2.0, 0.5, 120, dtype=torch.float64), seed=1)
    study, f64, s64 = _reference(d)
    got = spectra.delta_spectrum(d)
    assert (got["rank"], got["rank_f64"]) == (study, f64) == (120, 120)
    assert (got["values"], got["study"]) == ("gram", "reused")
    assert torch.allclose(got["sigma"], s64, rtol=1e-12, atol=0)
    # wide as well as tall: the Gram matrix of the smaller side
    got = spectra.delta_spectrum(d.T.contiguous())
    assert (got["rank"], got["rank_f64"], got["values"]) == (120, 120, "gram")


def test_low_rank_update_counts_only_its_rank_in_both():
    # entries are small integers: exact in float32, so Delta has rank 3 exactly
    gen = torch.Generator().manual_seed(2)
    d = (torch.randint(-3, 4, (200, 3), generator=gen) @ torch.randint(-3, 4, (3, 90), generator=gen)).float()
    study, f64, _ = _reference(d)
    got = spectra.delta_spectrum(d)
    assert (got["rank"], got["rank_f64"]) == (study, f64) == (3, 3)
    assert got["values"] == "svd64"  # Gram eigenvalues cannot prove where the zeros are: the definition decides


def test_tail_between_the_two_thresholds_is_counted_by_float64_only():
    # 40 singular values at 1, 20 at 1e-6 (below float32's 200 * 2^-23 = 2.4e-5, far above float64's)
    s = torch.cat([torch.ones(40, dtype=torch.float64), torch.full((20,), 1e-6, dtype=torch.float64)])
    d = _with_spectrum(200, 80, s, seed=3)
    study, f64, _ = _reference(d)
    got = spectra.delta_spectrum(d)
    assert got["rank"] == study == 40
    assert got["rank_f64"] == f64 and f64 >= 60  # float32 rounding noise fills the rest of float64's count
    assert got["study"] == "reused"  # nothing near float32's threshold: the float64 values decide it


def test_zero_update_and_row_blocks():
    z = spectra.delta_spectrum(torch.zeros(30, 20))
    assert (z["rank"], z["rank_f64"]) == (0, 0)
    d = _with_spectrum(257, 64, torch.logspace(0, -3, 64, dtype=torch.float64), seed=4)
    whole = spectra.delta_spectrum(d)
    blocks = spectra.delta_spectrum([d[:100], d[100:101], d[101:]])
    assert (blocks["rank"], blocks["rank_f64"]) == (whole["rank"], whole["rank_f64"]) == _reference(d)[:2]
    assert torch.allclose(blocks["sigma"], whole["sigma"], rtol=1e-9, atol=0)  # same sums, another order


@pytest.mark.parametrize("m, n", [(300, 120), (120, 300)])
def test_well_conditioned_update_is_certified_full_rank_by_one_cholesky(m, n):
    d = _with_spectrum(m, n, torch.linspace(2.0, 0.5, min(m, n), dtype=torch.float64), seed=1)
    got = spectra.delta_spectrum(d, need_sigma=False)  # no geometry: the spectrum itself is not wanted
    assert (got["rank"], got["rank_f64"]) == _reference(d)[:2] == (min(m, n), min(m, n))
    assert (got["values"], got["study"], got["sigma"]) == ("cholesky", "cholesky", None)


@pytest.mark.parametrize("smallest, certified", [(1e-5, False), (5e-5, False), (2e-3, True)])
def test_the_certificate_never_claims_full_rank_near_or_below_the_studys_threshold(smallest, certified):
    # 256 x 260: float32's threshold is 260 * 2^-23 = 3.1e-5 sigma_1, its SVD's margin ~1.5e-5 sigma_1
    d = _with_spectrum(256, 260, torch.logspace(0, math.log10(smallest), 256, dtype=torch.float64), seed=9)
    got = spectra.delta_spectrum(d, need_sigma=False)
    assert (got["rank"], got["rank_f64"]) == _reference(d)[:2]
    assert (got["values"] == "cholesky") is certified
    if smallest < 3.1e-5:
        assert got["rank"] < 256 == got["rank_f64"]


def test_a_square_update_goes_straight_to_its_eigenvalues(monkeypatch):
    tried = []
    monkeypatch.setattr(spectra, "_cholesky_completes", lambda c: tried.append(c) or True)
    d = _with_spectrum(256, 256, torch.logspace(0, -3, 256, dtype=torch.float64), seed=10)
    got = spectra.delta_spectrum(d, need_sigma=False)
    assert (got["rank"], got["rank_f64"]) == _reference(d)[:2] == (256, 256)
    assert got["values"] == "gram" and tried == []


@pytest.mark.parametrize("m, n", [(600, 120), (120, 600)])
def test_a_long_update_is_certified_from_a_subset_of_its_rows(monkeypatch, m, n):
    monkeypatch.setattr(spectra, "GRAM_BLOCK", 16)
    seen = []
    real = spectra.partial_gram
    monkeypatch.setattr(spectra, "partial_gram", lambda *a, **k: seen.append(k.get("take")) or real(*a, **k))
    d = torch.randn(m, n, generator=torch.Generator().manual_seed(5)).bfloat16().float()
    got = spectra.delta_spectrum([d[:250], d[250:]] if m > n else d, need_sigma=False)
    assert (got["rank"], got["rank_f64"]) == _reference(d)[:2] == (120, 120)
    assert got["values"] == "cholesky" and len(seen) == 1  # one partial Gram matrix sufficed
    taken: list[bool] = []
    take = spectra._spread(spectra.subset_rows((600, 120)) / 600, taken)
    rows = sum(e - s for s, e in ((i, min(600, i + 16)) for i in range(0, 600, 16)) if take(s, e))
    assert 150 <= rows < 150 + 16 and taken.count(True) < len(taken) / 2


@pytest.mark.parametrize("m, n", [(600, 120), (120, 600)])
def test_a_subset_that_cannot_prove_full_rank_hands_over_to_the_whole_matrix(monkeypatch, m, n):
    monkeypatch.setattr(spectra, "GRAM_BLOCK", 16)
    calls = []
    real = spectra.partial_gram
    monkeypatch.setattr(spectra, "partial_gram", lambda *a, **k: calls.append(k.get("into") is None) or real(*a, **k))
    gen = torch.Generator().manual_seed(6)
    # rows 0..539 in a 30-dimensional subspace, the last 60 free: the spread subset holds ~15 free rows
    d = torch.cat([torch.randn(540, 30, generator=gen) @ torch.randn(30, 120, generator=gen),
                   torch.randn(60, 120, generator=gen)]).bfloat16().float()
    d = d if m > n else d.T.contiguous()
    got = spectra.delta_spectrum(d, need_sigma=False)
    assert (got["rank"], got["rank_f64"]) == _reference(d)[:2] == (120, 120)
    assert got["values"] == "cholesky" and calls == [True, False]  # the rest completed G, which proves it
    low = _with_spectrum(m, n, torch.logspace(0, -6, 120, dtype=torch.float64), seed=7)
    got = spectra.delta_spectrum(low, need_sigma=False)
    assert (got["rank"], got["rank_f64"]) == _reference(low)[:2] and got["rank"] < 120
    assert got["values"] == "gram"


def test_cholesky_by_panels_is_lapacks_and_fails_where_it_does(monkeypatch):
    monkeypatch.setattr(spectra, "CHOLESKY_PANEL", 16)  # 100 = 6 panels of 16 and one of 4
    a = torch.randn(300, 100, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    g = a.T @ a
    c = g.tril()
    assert spectra._cholesky_completes(c)
    assert torch.allclose(c.tril(), torch.linalg.cholesky(g), rtol=0, atol=1e-12 * float(g.diagonal().max()) ** 0.5)
    lam = torch.linalg.eigvalsh(g)
    for shift, completes in ((0.999 * float(lam[0]), True), (1.001 * float(lam[0]), False)):
        c = g.tril()
        c.diagonal().sub_(shift)
        assert spectra._cholesky_completes(c) is completes


def test_sum_of_squares_bound_is_above_the_exact_sum_and_close_to_it():
    x = torch.randn(700, 300, generator=torch.Generator().manual_seed(9))
    exact = float(x.double().square().sum())
    for part in (x, x[:, 7:50]):  # contiguous rows, and a strided slice of columns
        bound, truth = spectra._sumsq_bound(part), float(part.double().square().sum())
        assert truth <= bound <= truth * (1 + 0.02)
    assert spectra._sumsq_bound(x) >= exact


@pytest.mark.parametrize("m, n", [(70, 45), (45, 70)])
def test_gram_is_the_lower_triangle_of_the_float64_product_from_row_blocks(monkeypatch, m, n):
    monkeypatch.setattr(spectra, "MIN_TILE", 8)  # a side of 45 in four uneven tiles
    monkeypatch.setattr(spectra, "GRAM_BLOCK", 16)  # and uneven stretches of the sums
    d = torch.randn(m, n, generator=torch.Generator().manual_seed(m)).bfloat16().float()
    g, fro2 = spectra.gram(lambda: iter([d[:30], d[30:31], d[31:]]), (m, n), "cpu")
    d64 = d.double()
    ref = d64.T @ d64 if m >= n else d64 @ d64.T
    assert not bool(g.triu(1).any())
    assert torch.allclose(g.tril(), ref.tril(), rtol=1e-13, atol=1e-12)
    assert fro2 == pytest.approx(float(d64.square().sum()), rel=1e-13)


def test_rank_delta_is_the_float32_update_with_non_finite_values_made_finite():
    inf, nan, big = math.inf, math.nan, torch.finfo(torch.float32).max
    b = torch.tensor([1.0, inf, nan, 3.0, -inf, 2.0 ** 100], dtype=torch.bfloat16)
    t = torch.tensor([1.0078125, inf, 1.0, inf, 0.0, 2.0 ** -100], dtype=torch.bfloat16)
    assert bins.rank_delta(b, t).tolist() == [0.0078125, 0.0, 0.0, big, big, -(2.0 ** 100)]
    for dtype in (torch.bfloat16, torch.float16):  # the numba loop (16-bit) and torch (float32) agree
        b16, t16 = b.to(dtype), t.to(dtype)
        assert torch.equal(bins.rank_delta(b16, t16), bins.rank_delta(b16.float(), t16.float()))
    gen = torch.Generator().manual_seed(0)
    b, t = (torch.randn(4096, generator=gen) * 10.0 ** torch.randint(-6, 3, (4096,), generator=gen)
            for _ in range(2))
    for dtype in (torch.bfloat16, torch.float16):  # exact in float32: equal to the float64 difference
        bb, tt = b.to(dtype), t.to(dtype)
        assert torch.equal(bins.rank_delta(bb, tt), (tt.double() - bb.double()).float())


@pytest.mark.parametrize("m, n, decades", [(384, 384, 5.5), (500, 300, 7.0), (256, 700, 3.0)])
def test_float32_svd_error_stays_inside_the_bound_the_study_rank_relies_on(m, n, decades):
    d = _with_spectrum(m, n, torch.logspace(0, -decades, min(m, n), dtype=torch.float64), seed=m)
    s32 = torch.linalg.svdvals(d).double()
    s64 = torch.linalg.svdvals(d.double())
    observed = float((s32 - s64).abs().max()) / (float(s64[0]) * spectra.EPS32)
    assert observed <= spectra.STUDY_GROWTH * math.sqrt(max(m, n)) / 4  # 4x headroom under the bound used


def _bf16_pair(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A base with a decaying spectrum and a sparse bf16 update, both as exact float32."""
    gen = torch.Generator().manual_seed(seed)
    w = _with_spectrum(m, n, torch.logspace(0, -1.5, min(m, n), dtype=torch.float64), seed=seed).bfloat16()
    step = (torch.randn(m, n, generator=gen) * 2e-3 * (torch.rand(m, n, generator=gen) < 0.2)).bfloat16()
    return w.float(), (w.float() + step.float()).bfloat16().float()


def _within_metrics_tolerances(fast: dict, ref: dict) -> None:
    """metrics.md "Update geometry": what a cheaper path must keep to against the float64 reference."""
    for side in ("two_sided", "left", "right"):
        assert fast["energy"][side] == pytest.approx(ref["energy"][side], abs=1e-6)
    for key in ("u_mean_sin", "v_mean_sin"):
        assert fast["rotation"][key] == pytest.approx(ref["rotation"][key], abs=1e-6)
    for key in ("u_max_deg", "v_max_deg"):
        assert fast["rotation"][key] == pytest.approx(ref["rotation"][key], abs=0.01)
    assert fast["drift"] == pytest.approx(ref["drift"], abs=1e-7)


@pytest.mark.parametrize("m, n", [(160, 96), (96, 160), (128, 128)])
def test_fast_geometry_is_within_metrics_tolerances_of_the_float64_reference(m, n):
    base, tuned = _bf16_pair(m, n, seed=m + n)
    assert factors.top_factors(base.double(), G.ks(m, n)[-1]) is not None  # the fast path is the one tested
    sd = spectra.delta_spectrum(tuned - base)["sigma"]
    fast = G.geometry(base, tuned, delta_sigma=sd)
    ref = G.geometry(base, tuned, reference=True)
    _within_metrics_tolerances(fast, ref)
    assert fast["stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-9)
    assert fast["effective_rank"] == pytest.approx(ref["effective_rank"], rel=1e-9)
    assert fast["spectra"]["base"] == pytest.approx(ref["spectra"]["base"], rel=1e-6)


def test_a_base_whose_smallest_values_gram_cannot_resolve_keeps_its_vectors_and_takes_exact_values():
    m = n = 128  # a float32 base down to 1e-7 sigma_1: its tail is below the Gram matrix's error bound
    base = _with_spectrum(m, n, torch.logspace(0, -7, n, dtype=torch.float64), seed=11)
    gen = torch.Generator().manual_seed(12)
    tuned = base + (torch.randn(m, n, generator=gen) * 1e-3 * (torch.rand(m, n, generator=gen) < 0.2))
    k = G.ks(m, n)[-1]
    got = factors.top_factors(base, k)
    assert got is not None and torch.equal(got[1], torch.linalg.svdvals(base.double()))  # the values: the definition
    sd = spectra.delta_spectrum(tuned - base)["sigma"]
    fast, ref = G.geometry(base, tuned, delta_sigma=sd), G.geometry(base, tuned, reference=True)
    _within_metrics_tolerances(fast, ref)


def test_geometry_of_row_blocks_is_that_of_the_whole_matrix():
    """The SVD phase hands geometry the pass's row blocks (16-bit, uneven at the end), never joined."""
    base, tuned = _bf16_pair(160, 96, seed=3)
    cuts = [0, 7, 64, 150, 160]

    def blocks(w):
        return [w[a:b].bfloat16() for a, b in zip(cuts, cuts[1:])]

    whole, parts = G.geometry(base, tuned), G.geometry(blocks(base), blocks(tuned))
    for side in ("two_sided", "left", "right"):
        assert parts["energy"][side] == pytest.approx(whole["energy"][side], rel=1e-9, abs=1e-12)
    for key, values in whole["rotation"].items():
        assert parts["rotation"][key] == pytest.approx(values, rel=1e-9, abs=1e-9)
    assert parts["drift"] == pytest.approx(whole["drift"], rel=1e-9)
    assert parts["spectra"]["base"] == whole["spectra"]["base"]


def test_geometry_read_in_many_small_spans_is_that_of_one_span(monkeypatch):
    """Spans reuse one buffer: each must be used up before the next overwrites it."""
    base, tuned = _bf16_pair(160, 96, seed=4)
    one = G.geometry(base, tuned)
    monkeypatch.setattr(factors, "SPAN_BYTES", 8 * 96 * 7)  # 7 rows a span: 23 spans, the last short
    many = G.geometry(base, tuned)
    for side in ("two_sided", "left", "right"):
        assert many["energy"][side] == pytest.approx(one["energy"][side], rel=1e-9, abs=1e-12)
    assert many["stable_rank"] == pytest.approx(one["stable_rank"], rel=1e-9)  # Delta's values from the spans
    for key, values in one["rotation"].items():
        assert many["rotation"][key] == pytest.approx(values, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("m, n", [(400, 60), (60, 400)])
def test_top_factors_are_orthonormal_at_the_steepest_spectrum_they_accept(m, n):
    """U_k by CholeskyQR in place: orthonormal to float64 precision with sigma_kmax near
    MIN_SIGMA_RATIO sigma_1, and the span of the SVD's top vectors."""
    kmax = G.ks(m, n)[-1]
    top = torch.logspace(0, math.log10(1.5e-4), kmax, dtype=torch.float64)
    s = torch.cat([top, torch.logspace(math.log10(1.4e-4), -5, 60 - kmax, dtype=torch.float64)])
    w = _with_spectrum(m, n, s, seed=11)
    assert 1e-4 < float(s[kmax - 1]) < 2e-4
    u, _, vh = factors.top_factors(w, kmax)
    eye = torch.eye(kmax, dtype=torch.float64)
    assert float((u.T @ u - eye).abs().max()) < 1e-12 and float((vh @ vh.T - eye).abs().max()) < 1e-12
    ref_u, _, ref_vh = torch.linalg.svd(w.double(), full_matrices=False)
    for a, b in ((u, ref_u[:, :kmax]), (vh.T, ref_vh[:kmax].T)):  # the same top subspaces
        assert float(torch.linalg.svdvals(b.T @ a).min()) > 1 - 1e-6


@pytest.mark.parametrize("scale, passes", [(1.0, 1), (1e3, 2)])
def test_cholesky_qr_takes_a_second_pass_only_where_the_first_leaves_a_t_a_off_identity(monkeypatch, scale,
                                                                                      passes):
    """Nearly orthonormal columns (what W V_k S_k^-1 is) need one pass; columns a thousand times
    apart in length need CholeskyQR2's second. Either way: orthonormal, the same nested spans."""
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(300, 40, dtype=torch.float64, generator=gen))
    a = (q + 1e-9 * torch.randn(300, 40, dtype=torch.float64, generator=gen)) * torch.logspace(
        0, math.log10(scale), 40, dtype=torch.float64)
    calls = []
    cholesky = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda *x, **k: calls.append(1) or cholesky(*x, **k))
    before = a.clone()
    assert factors._orthonormalise(a)
    assert len(calls) == passes
    assert float((a.T @ a - torch.eye(40, dtype=torch.float64)).abs().max()) < 1e-14
    for k in (1, 10, 40):  # span(a_j, j <= k) kept: the component of the old columns off the new span is nil
        off = before[:, :k] - a[:, :k] @ (a[:, :k].T @ before[:, :k])
        assert float(off.norm() / before[:, :k].norm()) < 1e-13


def test_a_wide_updates_gram_reads_only_the_columns_of_each_stretch_where_it_can():
    """The SVD phase makes Delta from both sides' rows on demand: a wide one's Gram matrix asks for a
    stretch of columns at a time (not every row, once per stretch) and gets the same spectrum."""
    from worker.engine.kernel.svd_phase import _DeltaRows

    gen = torch.Generator().manual_seed(8)
    base = torch.randn(90, 700, generator=gen).bfloat16()
    tuned = torch.where(torch.rand(90, 700, generator=gen) < 0.3, (base.float() * 1.01).bfloat16(), base)
    pairs = [(base[:50], tuned[:50]), (base[50:], tuned[50:])]
    asked = []

    class Counting(_DeltaRows):
        def __call__(self):
            asked.append("rows")
            return super().__call__()

        def columns(self, start, stop):
            asked.append((start, stop))
            return super().columns(start, stop)

    fast = spectra.delta_spectrum(Counting(pairs), shape=(90, 700))
    assert "rows" not in asked and len(asked) == -(-700 // spectra.GRAM_BLOCK)
    rows = [bins.rank_delta(b, t) for b, t in pairs]
    assert torch.equal(fast["sigma"], spectra.delta_spectrum(rows)["sigma"])
    assert fast["rank_f64"] == spectra.delta_spectrum(rows)["rank_f64"]


def test_rank_deficient_base_falls_back_to_the_full_svd():
    s = torch.cat([torch.ones(5, dtype=torch.float64), torch.zeros(35, dtype=torch.float64)])
    w = _with_spectrum(60, 40, s, seed=5).double()
    assert factors.top_factors(w, G.ks(60, 40)[-1]) is None  # sigma_k = 0 at k = 20 %: no U_k from W V_k


def test_analyze_reports_both_ranks_per_matrix_layer_module_and_model(tmp_path):
    long_tail = _with_spectrum(384, 384, torch.logspace(0, -5.5, 384, dtype=torch.float64), seed=6)
    gen = torch.Generator().manual_seed(7)
    base, tuned = {}, {}
    for i in range(2):
        w = torch.randn(384, 384, generator=gen)
        base[f"model.layers.{i}.self_attn.o_proj.weight"] = w
        tuned[f"model.layers.{i}.self_attn.o_proj.weight"] = w + (long_tail if i == 0 else 0.01 * torch.randn(
            384, 384, generator=gen))
        base[f"model.layers.{i}.input_layernorm.weight"] = tuned[f"model.layers.{i}.input_layernorm.weight"] = \
            torch.ones(384)
    for side, tensors in (("b", base), ("t", tuned)):
        (tmp_path / side).mkdir()
        save_file(tensors, str(tmp_path / side / "model.safetensors"))
    seen = []
    with open_source(parse_source(str(tmp_path / "b"), allow_any_path=True)) as sb, \
            open_source(parse_source(str(tmp_path / "t"), allow_any_path=True)) as st:
        options = AnalysisOptions(rank="all", device="cpu")
        before = estimate(plan_analysis(sb, st, options), options)  # what the service says at submission
        result = analyze(sb, st, options, on_progress=lambda p: seen.append(
            (p.svd_matrices_done, p.svd_matrices_total, p.svd_done, p.svd_total)))
    assert before["matrices"] == 2 and before["seconds"] > 0
    assert seen[0][1] == 2 and seen[0][3] > 0  # the SVD phase's size is known before it starts
    assert seen[-1][0] == seen[-1][1] == 2 and seen[-1][2] == pytest.approx(seen[-1][3])  # and ends complete
    assert [d for d, *_ in seen] == sorted(d for d, *_ in seen)
    recs = {r["layer"]: r for r in result["tensors"] if len(r["shape"]) == 2}
    for layer, rec in recs.items():
        d = (torch.from_numpy(tuned[rec["name"]].double().numpy()) - base[rec["name"]].double()).float()
        study, f64, _ = _reference(d)
        assert (rec["rank"], rec["rank_f64"]) == (study, f64)
        assert rec["rank_ratio"] == study / 384 and rec["rank_f64_ratio"] == f64 / 384
    assert recs[0]["rank"] < 384 - 40 and recs[0]["rank_f64"] == 384  # the long tail: the two differ
    rank = result["summary"]["rank"]
    assert rank["study"]["matrices"] == rank["f64"]["matrices"] == 2
    assert rank["study"]["mean"] == pytest.approx(sum(r["rank_ratio"] for r in recs.values()) / 2)
    assert rank["f64"]["mean"] == pytest.approx(sum(r["rank_f64_ratio"] for r in recs.values()) / 2)
    assert rank["mean"] == rank["study"]["mean"]  # the study's figure keeps its place
    layer0 = next(g for g in result["layers"] if g["layer"] == 0)
    assert layer0["rank"]["f64"]["mean"] == 1.0 and layer0["rank"]["study"]["mean"] == recs[0]["rank_ratio"]
    module = next(g for g in result["modules"] if g["module"] == "self_attn.o_proj")
    assert module["rank"]["f64"]["matrices"] == 2
    norm = next(r for r in result["tensors"] if len(r["shape"]) == 1)
    assert norm["rank"] is None and norm["rank_f64"] is None
