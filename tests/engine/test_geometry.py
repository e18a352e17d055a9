"""Update geometry (worker/engine/kernel/geometry.py) against numpy on constructed cases and end to end."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worker.engine import AnalysisOptions, EngineError, analysis, analyze, open_source, parse_source
from worker.engine.kernel import geometry as G

M, N = 120, 80  # r = 80: k = 1, 4, 8, 16


def _orthonormal(rng, m, k):
    q, _ = np.linalg.qr(rng.standard_normal((m, k)))
    return q


def _base(rng, spectrum=None):
    """W = U diag(s) V^T with distinct, well-separated singular values."""
    u, v = _orthonormal(rng, M, N), _orthonormal(rng, N, N)
    s = np.linspace(10.0, 1.0, N) if spectrum is None else spectrum
    return u, s, v, u @ np.diag(s) @ v.T


def _geo(w, wt):
    return G.geometry(torch.from_numpy(w), torch.from_numpy(wt))


def test_ks_are_ceil_of_q_times_min_dim():
    assert G.ks(M, N) == [1, 4, 8, 16]
    assert G.ks(4096, 11008) == [41, 205, 410, 820]
    assert G.ks(3, 2) == [1, 1, 1, 1]


def test_delta_inside_the_top_k_subspaces_has_energy_one():
    rng = np.random.default_rng(0)
    u, s, v, w = _base(rng)
    k = 4  # q = 5 %
    delta = 1e-3 * u[:, :k] @ rng.standard_normal((k, k)) @ v[:, :k].T
    g = _geo(w, w + delta)
    i = G.QS.index(0.05)
    assert g["k"][i] == k
    for side in ("two_sided", "left", "right"):
        assert g["energy"][side][i] == pytest.approx(1.0, abs=1e-10)
        assert g["energy"][side][i + 1] == pytest.approx(1.0, abs=1e-10)  # a larger k holds it too
    assert g["baseline"]["two_sided"][i] == pytest.approx((k / M) * (k / N))
    assert g["baseline"]["left"][i] == pytest.approx(k / M)
    assert g["baseline"]["right"][i] == pytest.approx(k / N)


def test_delta_orthogonal_to_the_top_k_subspaces_has_energy_zero():
    rng = np.random.default_rng(1)
    u, s, v, w = _base(rng)
    k = 16  # q = 20 %: the largest k; every smaller k is inside it
    u_out = u[:, k:]  # orthogonal to U_k, and to every left singular vector beyond r as well
    delta = 1e-3 * u_out[:, :30] @ rng.standard_normal((30, 30)) @ v[:, k:k + 30].T
    g = _geo(w, w + delta)
    for side in ("two_sided", "left", "right"):
        assert g["energy"][side] == pytest.approx([0.0] * 4, abs=1e-10)
    # left-only: Delta inside U_k on the left, anywhere on the right
    delta = 1e-3 * u[:, :k] @ rng.standard_normal((k, N)) @ np.eye(N)
    g = _geo(w, w + delta)
    assert g["energy"]["left"][3] == pytest.approx(1.0, abs=1e-10)
    assert g["energy"]["two_sided"][3] < 0.5


def test_energies_match_numpy_projections():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((M, N))
    delta = 0.01 * rng.standard_normal((M, N))
    g = _geo(w, w + delta)
    u, _, vt = np.linalg.svd(w, full_matrices=False)
    fro2 = (delta ** 2).sum()
    for i, k in enumerate(g["k"]):
        uk, vk = u[:, :k], vt[:k].T
        assert g["energy"]["two_sided"][i] == pytest.approx(((uk.T @ delta @ vk) ** 2).sum() / fro2, rel=1e-9)
        assert g["energy"]["left"][i] == pytest.approx(((uk.T @ delta) ** 2).sum() / fro2, rel=1e-9)
        assert g["energy"]["right"][i] == pytest.approx(((delta @ vk) ** 2).sum() / fro2, rel=1e-9)


def test_a_known_rotation_gives_its_angle():
    rng = np.random.default_rng(3)
    u, s, v, w = _base(rng)
    theta = math.radians(10.0)
    # turn u_1 by theta towards u_60 (outside every top-k): W~'s top left direction moves by theta
    u2 = u.copy()
    u2[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, 59]
    u2[:, 59] = -math.sin(theta) * u[:, 0] + math.cos(theta) * u[:, 59]
    g = _geo(w, u2 @ np.diag(s) @ v.T)
    rot = g["rotation"]
    for i, k in enumerate(g["k"]):
        assert rot["u_max_deg"][i] == pytest.approx(10.0, abs=1e-8)
        assert rot["u_mean_sin"][i] == pytest.approx(math.sin(theta) / k, abs=1e-10)  # one angle, k - 1 zeros
        assert rot["v_max_deg"][i] == pytest.approx(0.0, abs=1e-6)
    assert g["drift"] == pytest.approx(0.0, abs=1e-12)  # a rotation keeps the spectrum


def test_small_and_right_angles_are_accurate():
    rng = np.random.default_rng(4)
    a = _orthonormal(rng, 50, 6)
    for deg in (1e-6, 89.9999, 90.0):
        t = math.radians(deg)
        other = _orthonormal(rng, 50, 7)
        other -= a @ (a.T @ other)
        e = np.linalg.qr(other)[0][:, :1]
        b = a.copy()
        b[:, 2] = math.cos(t) * a[:, 2] + math.sin(t) * e[:, 0]
        theta = G._angles(torch.from_numpy(a), torch.from_numpy(b))
        assert math.degrees(float(theta.max())) == pytest.approx(deg, abs=1e-9)


def test_a_scaled_base_drifts_by_the_scale_minus_one():
    rng = np.random.default_rng(5)
    _, _, _, w = _base(rng)
    for c in (1.5, 0.75, 1.001):
        g = _geo(w, c * w)
        assert g["drift"] == pytest.approx(abs(c - 1), rel=1e-10)
        # Delta = (c - 1) W lies entirely in W's singular subspaces
        assert g["energy"]["two_sided"][3] == pytest.approx(
            (np.linspace(10, 1, N)[:16] ** 2).sum() / (np.linspace(10, 1, N) ** 2).sum(), rel=1e-9)
        assert g["rotation"]["u_max_deg"] == pytest.approx([0.0] * 4, abs=1e-5)


def test_stable_and_effective_rank_of_a_known_spectrum():
    rng = np.random.default_rng(6)
    _, _, _, w = _base(rng)
    p, q = _orthonormal(rng, M, 4), _orthonormal(rng, N, 4)
    sig = np.array([4.0, 2.0, 1.0, 1.0])
    g = _geo(w, w + p @ np.diag(sig) @ q.T)
    assert g["stable_rank"] == pytest.approx((sig ** 2).sum() / 16.0, rel=1e-10)  # 22 / 16
    pr = sig / sig.sum()
    assert g["effective_rank"] == pytest.approx(math.exp(-(pr * np.log(pr)).sum()), rel=1e-10)
    flat = _geo(w, w + p @ q.T)  # four equal singular values
    assert flat["stable_rank"] == pytest.approx(4.0) and flat["effective_rank"] == pytest.approx(4.0)


def test_no_update_and_non_finite_weights():
    rng = np.random.default_rng(7)
    _, _, _, w = _base(rng)
    g = _geo(w, w.copy())
    assert g["energy"]["two_sided"] == [None] * 4 and g["stable_rank"] is None and g["drift"] == 0.0
    bad = w.copy()
    bad[3, 4] = np.nan
    assert _geo(w, bad) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_entry_in_any_16_bit_row_block_leaves_geometry_out(bad):
    w = torch.randn(96, 40, generator=torch.Generator().manual_seed(2)).bfloat16()
    t = w.clone()
    t[70, 39] = bad  # the last entry of the second block's rows
    blocks = lambda x: [x[:50], x[50:]]  # noqa: E731
    assert G.geometry(blocks(w), blocks(t)) is None
    assert G.geometry(blocks(t), blocks(w)) is None
    assert G.geometry(blocks(w), blocks(w.clone())) is not None


def test_a_job_with_several_threads_factors_both_sides_side_by_side_with_the_same_numbers(monkeypatch):
    """Each side then runs on half the threads, on its own thread: the numbers are those of one
    thread doing both in turn (one thread per side either way: the same arithmetic)."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(300, 120, generator=gen).bfloat16()
    t = torch.where(torch.rand(300, 120, generator=gen) < 0.2, (w.float() * 1.02).bfloat16(), w)
    ran_on, factors = [], {}
    top = G.top_factors

    def spy(w, *a, **k):
        ran_on.append((threading.current_thread().name, torch.get_num_threads()))
        out = top(w, *a, **k)
        factors.setdefault(w.blocks[0].data_ptr(), []).append(out)
        return out

    monkeypatch.setattr(G, "top_factors", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = G.geometry([w[:100], w[100:]], [t[:100], t[100:]])
        assert [name for name, _ in ran_on] == [threading.current_thread().name] * 2
        ran_on.clear()
        torch.set_num_threads(2)
        two = G.geometry([w[:100], w[100:]], [t[:100], t[100:]])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert sorted(name.startswith("geometry-side") for name, _ in ran_on) == [False, True]  # two threads at once
    assert [k for _, k in ran_on] == [1, 1] and after == 2  # half each; the caller's own setting back after
    assert len(factors) == 2 and all(len(runs) == 2 for runs in factors.values())
    for first, second in factors.values():  # bit for bit
        assert all(torch.equal(x, y) for x, y in zip(first, second))
    one.pop("seconds"), two.pop("seconds")

    def flat(x):
        out = [v for y in x.values() for v in flat(y)] if isinstance(x, dict) else x if isinstance(x, list) else [x]
        return [math.nan if v is None else v for v in out]

    # what follows the factors ran on two threads
    assert flat(one) == pytest.approx(flat(two), rel=1e-12, abs=1e-15, nan_ok=True)


def test_spectrum_is_capped():
    s = torch.linspace(5000, 1, 5000, dtype=torch.float64)
    index, values = G.spectrum(s)
    assert len(values) == len(index) <= G.SPECTRUM_ALL
    assert index[: G.SPECTRUM_TOP] == list(range(G.SPECTRUM_TOP)) and index[-1] == 4999
    assert values[:3] == [5000.0, 4999.0, 4998.0]
    assert G.spectrum(s[:100]) == (None, s[:100].tolist())


def test_weighted_means_are_element_weighted():
    recs = [{"numel": 1, "geometry": {"stable_rank": 1.0, "effective_rank": 1.0, "drift": 0.1, "seconds": 1.0,
                                      "energy": {k: [0.0] * 4 for k in ("two_sided", "left", "right")},
                                      "baseline": {k: [0.0] * 4 for k in ("two_sided", "left", "right")},
                                      "rotation": {k: [0.0] * 4 for k in ("u_mean_sin", "u_max_deg", "v_mean_sin",
                                                                          "v_max_deg")}}},
            {"numel": 3, "geometry": None}]
    recs.append({"numel": 3, "geometry": {**recs[0]["geometry"], "drift": 0.5,
                                          "energy": {k: [1.0] * 4 for k in ("two_sided", "left", "right")}}})
    g = G.weighted(recs)
    assert g["matrices"] == 2 and g["numel"] == 4
    assert g["drift"] == pytest.approx(0.4) and g["energy"]["left"] == pytest.approx([0.75] * 4)
    assert G.weighted([{"numel": 3, "geometry": None}]) is None


# ---- end to end ---------------------------------------------------------------------------

def _numpy_geometry(w, wt):
    """docs/METRICS.md's definitions, written out independently in numpy float64."""
    m, n = w.shape
    r = min(m, n)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    ut, st, vtt = np.linalg.svd(wt, full_matrices=False)
    d = wt - w
    sd = np.linalg.svd(d, compute_uv=False)
    fro2 = (d ** 2).sum()
    out = {"two_sided": [], "left": [], "u_max_deg": [], "v_mean_sin": []}
    for q in G.QS:
        k = math.ceil(q * r)
        out["two_sided"].append(((u[:, :k].T @ d @ vt[:k].T) ** 2).sum() / fro2)
        out["left"].append(((u[:, :k].T @ d) ** 2).sum() / fro2)
        cos_u = np.clip(np.linalg.svd(u[:, :k].T @ ut[:, :k], compute_uv=False), 0, 1)
        cos_v = np.clip(np.linalg.svd(vt[:k] @ vtt[:k].T, compute_uv=False), 0, 1)
        out["u_max_deg"].append(math.degrees(np.arccos(cos_u.min())))
        out["v_mean_sin"].append(np.sqrt(1 - cos_v ** 2).mean())
    p = sd / sd.sum()
    p = p[p > 0]
    out["stable_rank"] = fro2 / sd[0] ** 2
    out["effective_rank"] = math.exp(-(p * np.log(p)).sum())
    out["drift"] = np.linalg.norm(st - s) / np.linalg.norm(s)
    out["s"], out["st"] = s, st
    return out


def _checkpoint(path, state):
    path.mkdir(parents=True)
    save_file(state, str(path / "model.safetensors"))
    return str(path)


def test_analyze_reports_geometry_of_each_matrix(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    base = {"model.embed_tokens.weight": torch.randn(300, 24, generator=gen).to(torch.bfloat16)}
    for i in range(5):
        base[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(40, 24, generator=gen).to(torch.bfloat16)
        base[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(24, dtype=torch.bfloat16)
    base["model.layers.0.self_attn.q_proj.weight"] = torch.randn(24, 24, generator=gen)  # float32
    tuned = {k: (v.float() + 0.05 * torch.randn(v.shape, generator=gen) * (torch.rand(v.shape, generator=gen) < 0.3)
                 ).to(v.dtype) for k, v in base.items()}
    b, t = _checkpoint(tmp_path / "b", base), _checkpoint(tmp_path / "t", tuned)
    seen = []

    def run(mode):
        with open_source(parse_source(b, allow_any_path=True)) as sb, open_source(parse_source(t, allow_any_path=True)) as st:
            return analyze(sb, st, AnalysisOptions(geometry=mode, device="cpu"),
                           on_progress=lambda p: seen.append(p.current))

    result = run("all")
    assert result["options"]["geometry"] == "all"
    for rec in result["tensors"]:
        if len(rec["shape"]) != 2:
            assert rec["geometry"] is None
            continue
        w, wt = base[rec["name"]].double().numpy(), tuned[rec["name"]].double().numpy()
        ref, g = _numpy_geometry(w, wt), rec["geometry"]
        assert g["energy"]["two_sided"] == pytest.approx(ref["two_sided"], rel=1e-9, abs=1e-12)
        assert g["energy"]["left"] == pytest.approx(ref["left"], rel=1e-9, abs=1e-12)
        assert g["rotation"]["u_max_deg"] == pytest.approx(ref["u_max_deg"], abs=1e-5)
        assert g["rotation"]["v_mean_sin"] == pytest.approx(ref["v_mean_sin"], rel=1e-6, abs=1e-9)
        assert g["stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-9)
        assert g["effective_rank"] == pytest.approx(ref["effective_rank"], rel=1e-9)
        assert g["drift"] == pytest.approx(ref["drift"], rel=1e-9)
        assert g["spectra"]["base"] == pytest.approx(ref["s"].tolist(), rel=1e-6)
        assert g["spectra"]["tuned"] == pytest.approx(ref["st"].tolist(), rel=1e-6)
    assert "geometry model.embed_tokens.weight" in seen  # the SVDs show in the progress
    summary = result["summary"]["geometry"]
    matrices = [r for r in result["tensors"] if r["geometry"]]
    assert summary["mode"] == "all" and summary["matrices"] == len(matrices) == 7
    total = sum(r["numel"] for r in matrices)
    assert summary["drift"] == pytest.approx(sum(r["numel"] * r["geometry"]["drift"] for r in matrices) / total)
    layer0 = next(g for g in result["layers"] if g["layer"] == 0)
    assert layer0["geometry"]["matrices"] == 2
    norm = next(g for g in result["modules"] if g["module"] == "input_layernorm")
    assert norm["geometry"] is None

    # Every SVD job "big": each runs alone on every core and the pass waits for the others before
    # reading its matrix; the numbers stay the same
    monkeypatch.setattr(analysis._SvdFinisher, "BIG_JOB_BYTES", 0)

    def numbers(res):  # every number of every geometry record but its timing, in order
        def walk(x):
            if isinstance(x, dict):
                return [v for k, y in sorted(x.items()) if k != "seconds" for v in walk(y)]
            return [v for y in x for v in walk(y)] if isinstance(x, list) else [math.nan if x is None else x]
        return walk([r["geometry"] for r in res["tensors"] if r["geometry"]])

    # the same up to the order of float64 sums (intra-op threads differ)
    assert numbers(run("all")) == pytest.approx(numbers(result), rel=1e-9, abs=1e-12, nan_ok=True)
    monkeypatch.undo()

    sampled = run("sampled")  # first, middle and last layer of the stack, as rank samples
    assert {r["layer"] for r in sampled["tensors"] if r["geometry"]} == {0, 2, 4}
    off = run("off")
    assert all(r["geometry"] is None for r in off["tensors"])
    assert off["summary"]["geometry"] == {"mode": "off", "matrices": 0}
    with pytest.raises(EngineError):
        AnalysisOptions(geometry="some")


def test_geometry_leaves_out_matrices_above_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "MAX_ELEMENTS", 100)
    g = torch.Generator().manual_seed(0)
    state = {"model.layers.0.small.weight": torch.randn(8, 8, generator=g),
             "model.layers.0.big.weight": torch.randn(16, 8, generator=g)}
    for name, tensors in (("base", state), ("tuned", {k: v + 0.01 for k, v in state.items()})):
        (tmp_path / name).mkdir()
        save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(tmp_path / name / "model.safetensors"))
    with open_source(parse_source(str(tmp_path / "base"), allow_any_path=True)) as b, \
            open_source(parse_source(str(tmp_path / "tuned"), allow_any_path=True)) as t:
        result = analyze(b, t, AnalysisOptions(geometry="all", device="cpu"))
    recs = {r["name"]: r for r in result["tensors"]}
    assert recs["model.layers.0.small.weight"]["geometry"] is not None
    assert recs["model.layers.0.big.weight"]["geometry"] is None
    assert any("Geometry was not computed for 1 matrices" in w for w in result["warnings"])
