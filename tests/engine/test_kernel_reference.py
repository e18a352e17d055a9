"""Every per-tensor number of the engine against the brute-force float64 reference."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from reference import as_compared, changed_mask, compare_dtype, tensor_stats
from safetensors import safe_open
from safetensors.torch import save_file

from worker.engine import (
    CURVE_TOLERANCES,
    EXACT_TOLERANCES,
    AnalysisOptions,
    EngineError,
    analyze,
    load_masks,
    open_source,
    parse_source,
)
from worker.engine import analysis as analysis_module
from worker.engine.kernel.accumulator import Kernel

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]


def realistic_pair(shape, dtype, seed):
    """Weights at several scales, and updates from one ULP to 1e-2, some exactly at thresholds."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    tiny = torch.rand(shape, generator=g) < 0.2
    base = torch.where(tiny, base * 1e-4, base)  # near-zero weights, where t <= 1e-5 matters
    scales = 10.0 ** torch.randint(-9, -1, shape, generator=g).double()
    step = torch.randn(shape, generator=g).double() * scales
    keep = torch.rand(shape, generator=g) < 0.6
    tuned = torch.where(keep, base.double(), base.double() + step)
    b, u = base.to(dtype), tuned.to(dtype)
    if dtype in (torch.bfloat16, torch.float16, torch.float32):
        ulp = torch.rand(shape, generator=g) < 0.1
        u = torch.where(ulp, torch.nextafter(b, torch.full_like(b, 1.0)), u)
    return b, u


def write(dir_, state, *, shards: int = 1):
    dir_.mkdir(parents=True, exist_ok=True)
    names = list(state)
    if shards == 1:
        save_file({k: v.contiguous() for k, v in state.items()}, str(dir_ / "model.safetensors"))
    else:
        weight_map = {}
        for k in range(shards):
            part = names[k::shards]
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: state[n].contiguous() for n in part}, str(dir_ / fname))
            weight_map.update({n: fname for n in part})
        (dir_ / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (dir_ / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return dir_


def _run(tmp_path, base_state, tuned_state, *, backend, tolerance=1e-5, rank="off", shards=(1, 1), masks=True):
    b = open_source(parse_source(str(write(tmp_path / "base", base_state, shards=shards[0])), allow_any_path=True))
    u = open_source(parse_source(str(write(tmp_path / "tuned", tuned_state, shards=shards[1])), allow_any_path=True))
    masks_dir = tmp_path / "masks" if masks else None
    with b, u:
        return analyze(b, u, AnalysisOptions(tolerance=tolerance, rank=rank, device="cpu", backend=backend),
                       masks_dir=masks_dir)


def assert_matches(record, ref, tolerances):
    for t in tolerances:
        key = repr(float(t))
        assert record["changed"][key] == ref["changed"][key], (record["name"], key)
    assert record["numel"] == ref["numel"]
    assert record["nan"] == ref["nan"]
    assert record["ulp"] == ref["ulp"], record["name"]
    # float64 sums of exact float64 terms: they differ from the reference's only in summation order
    assert math.isclose(record["delta_fro"], ref["delta_fro"], rel_tol=1e-12), (record["delta_fro"], ref["delta_fro"])
    assert math.isclose(record["base_fro"], ref["base_fro"], rel_tol=1e-12), (record["base_fro"], ref["base_fro"])
    assert record["max_abs_delta"] == ref["max_abs_delta"]  # an exact delta
    if "row_coverage" in ref:
        assert record["row_coverage"] == ref["row_coverage"]
        assert record["col_coverage"] == ref["col_coverage"]


@pytest.fixture(params=["numba", "torch"])
def backend(request):
    """Every kernel test runs on both backends: the fused CPU loop and the torch ops CUDA uses."""
    return request.param


@pytest.fixture
def run(backend):
    """One analysis of two state dicts written as checkpoints, on this test's backend."""
    return functools.partial(_run, backend=backend)


@pytest.fixture
def small_pieces(monkeypatch):
    """Force many pieces per tensor, with rows that are not multiples of 8 elements."""
    monkeypatch.setattr(analysis_module, "PIECE_ELEMENTS", 300)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_every_number_matches_the_float64_reference(tmp_path, small_pieces, dtype, run):
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (37, 29),
        "model.layers.1.mlp.down_proj.weight": (16, 61),
        "model.layers.0.input_layernorm.weight": (53,),
        "model.norm.weight": (7,),
    }
    base, tuned = {}, {}
    for i, (name, shape) in enumerate(shapes.items()):
        base[name], tuned[name] = realistic_pair(shape, dtype, seed=i)
    chosen = 3e-5  # not one of the exact tolerances: it must be counted too
    result = run(tmp_path, base, tuned, tolerance=chosen)
    tolerances = list(EXACT_TOLERANCES) + [chosen]
    records = {r["name"]: r for r in result["tensors"]}
    masks = load_masks(tmp_path / "masks" / "masks.safetensors")
    for name in shapes:
        ref = tensor_stats(base[name], tuned[name], tolerances, chosen)
        assert_matches(records[name], ref, tolerances)
        assert torch.equal(masks[name], ref["mask"]), name
        curve = [int((tensor_stats(base[name], tuned[name], [t], chosen)["changed"][repr(t)])) for t in CURVE_TOLERANCES[::23]]
        assert records[name]["curve_changed"][::23] == curve
    # changed and unchanged elements both present, so no comparison passes vacuously
    changed = result["summary"]["changed"]
    assert 0 < changed["0.001"] <= changed["0.0"] < result["summary"]["numel"]
    if dtype.itemsize >= 2:  # fp8 steps are too coarse for small tolerances to differ
        assert changed["0.001"] < changed["1e-05"] < changed["0.0"]


@pytest.mark.parametrize("dtype, shape", [(torch.bfloat16, (512, 128)), (torch.float8_e4m3fn, (16, 16))])
def test_a_piece_as_long_as_a_value_table(tmp_path, dtype, shape, run):
    """One piece of exactly 2^16 (2^8) elements: the length of the fused loop's value table."""
    base, tuned = realistic_pair(shape, dtype, seed=11)
    result = run(tmp_path, {"w": base}, {"w": tuned}, masks=False)
    assert_matches(result["tensors"][0], tensor_stats(base, tuned, EXACT_TOLERANCES, 1e-5), EXACT_TOLERANCES)


def test_whole_curve_is_exact_and_has_eight_points_per_octave(tmp_path, run):
    base, tuned = realistic_pair((64, 64), torch.bfloat16, seed=7)
    result = run(tmp_path, {"w": base}, {"w": tuned}, masks=False)
    ts = result["curve_tolerances"]
    assert ts[0] <= 1e-9 and ts[-1] >= 1e-2
    for lo in ts[: -8]:
        if lo * 2 <= ts[-1]:
            assert sum(lo <= t < 2 * lo for t in ts) >= 8, lo
    ref = [int(tensor_stats(base, tuned, [t], 1e-5)["changed"][repr(t)]) for t in ts]
    assert result["summary"]["curve_changed"] == ref


def test_nan_inf_and_signed_zero(tmp_path, run):
    b = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0, 2.0, float("inf")], dtype=torch.bfloat16)
    u = torch.tensor([-0.0, 0.0, float("inf"), float("-inf"), 1.0, float("nan"), 2.0, float("-inf")], dtype=torch.bfloat16)
    result = run(tmp_path, {"x": b}, {"x": u}, masks=False)
    s = result["summary"]
    assert s["nan"] == 2
    # NaN on either side (2) and +inf -> -inf (1) are changed at every tolerance; +-0 and equal infinities are not
    assert all(c == 3 for c in s["changed"].values()), s["changed"]


def test_dtype_mismatch_compares_in_the_narrower_dtype(tmp_path, run):
    g = torch.Generator().manual_seed(3)
    b32 = torch.randn(40, 8, generator=g) * 0.02
    u16 = (b32 + torch.randn(40, 8, generator=g) * 1e-4).to(torch.bfloat16)
    result = run(tmp_path, {"w": b32}, {"w": u16}, masks=False)
    rec = result["tensors"][0]
    assert rec["compare_dtype"] == "bfloat16" and result["summary"]["dtype_mismatch"]
    assert_matches(rec, tensor_stats(*as_compared(b32, u16), EXACT_TOLERANCES, 1e-5), EXACT_TOLERANCES)
    assert result["unmatched"]["dtype_mismatch"] == [
        {"name": "w", "base_dtype": "F32", "tuned_dtype": "BF16", "compare_dtype": "bfloat16"}]
    assert any("narrower dtype" in w for w in result["warnings"])


def test_vocab_resize_compares_common_rows_and_reports_added(tmp_path, small_pieces, run):
    b, u = realistic_pair((50, 12), torch.bfloat16, seed=4)
    extra = torch.randn(6, 12).to(torch.bfloat16)
    result = run(tmp_path, {"model.embed_tokens.weight": b}, {"model.embed_tokens.weight": torch.cat([u, extra])})
    rec = result["tensors"][0]
    ref = tensor_stats(b, u, EXACT_TOLERANCES, 1e-5)
    assert rec["changed"] == ref["changed"] and rec["numel"] == 50 * 12
    assert rec["added"] == 6 * 12 and result["summary"]["added"] == 72
    assert rec["removed"] == 0 and result["summary"]["removed"] == 0
    assert result["unmatched"]["resized"][0]["added"] == 72 and result["unmatched"]["resized"][0]["removed"] == 0
    assert load_masks(tmp_path / "masks" / "masks.safetensors")["model.embed_tokens.weight"].shape == (50, 12)


def test_unmatched_tied_and_shape_mismatch_are_reported_not_compared(tmp_path, backend):
    w = lambda *shape: torch.ones(*shape, dtype=torch.bfloat16)  # noqa: E731
    base = {"model.embed_tokens.weight": w(4, 4), "lm_head.weight": w(4, 4), "gone": w(4, 4), "odd": w(4, 4)}
    tuned = {"model.embed_tokens.weight": w(4, 4), "new": w(4, 4), "odd": w(4, 5)}
    tmp_base = write(tmp_path / "base", base)
    (tmp_base / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": True}))
    write(tmp_path / "tuned", tuned)
    with open_source(parse_source(str(tmp_base), allow_any_path=True)) as b, open_source(
        parse_source(str(tmp_path / "tuned"), allow_any_path=True)
    ) as u:
        result = analyze(b, u, AnalysisOptions(device="cpu", backend=backend))
    un = result["unmatched"]
    assert un["tied"] == ["lm_head.weight"]
    assert un["only_base"] == ["gone"] and un["only_tuned"] == ["new"]
    assert [m["name"] for m in un["shape_mismatch"]] == ["odd"]
    assert result["summary"]["numel"] == 16 and len(result["warnings"]) >= 3


def test_sharded_and_single_file_give_the_same_result(tmp_path, run):
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)]
    pairs = {n: realistic_pair((24, 16), torch.bfloat16, seed=i) for i, n in enumerate(names)}
    base = {n: p[0] for n, p in pairs.items()}
    tuned = {n: p[1] for n, p in pairs.items()}
    one = run(tmp_path / "one", base, tuned, masks=False)
    many = run(tmp_path / "many", base, tuned, shards=(3, 2), masks=False)
    strip = lambda r: sorted((t["name"], t["changed"]["1e-05"], tuple(t["ulp"])) for t in r["tensors"])  # noqa: E731
    assert strip(one) == strip(many)
    assert one["summary"]["changed"] == many["summary"]["changed"]


def test_rank_matches_matrix_rank_and_sampled_mode_picks_first_middle_last(tmp_path, run):
    g = torch.Generator().manual_seed(5)
    base, tuned = {}, {}
    for i in range(5):
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        if i % 2:  # a realistic update: bf16 rounding makes it full rank
            b = (torch.randn(24, 20, generator=g) * 0.02).to(torch.bfloat16)
            low = (torch.randn(24, 2, generator=g) @ torch.randn(2, 20, generator=g)) * 1e-3
            base[name], tuned[name] = b, (b.float() + low).to(torch.bfloat16)
        else:  # an exactly rank-2 update with mixed signs (|delta| would have a higher rank)
            ints = lambda *s: torch.randint(-2, 3, s, generator=g).float()  # noqa: E731
            base[name] = torch.zeros(24, 20, dtype=torch.bfloat16)
            tuned[name] = (ints(24, 2) @ ints(2, 20)).to(torch.bfloat16)
    result = run(tmp_path / "all", base, tuned, rank="all", masks=False)
    for rec in result["tensors"]:
        ref = tensor_stats(base[rec["name"]], tuned[rec["name"]], [0.0], 1e-5, want_rank=True)
        assert rec["rank"] == ref["rank"] and rec["rank_ratio"] == ref["rank"] / 20
        if rec["layer"] % 2 == 0:
            assert rec["rank"] == 2
    ratios = [r["rank_ratio"] for r in result["tensors"]]
    assert result["summary"]["rank"]["mean"] == pytest.approx(sum(ratios) / 5)
    sampled = run(tmp_path / "sampled", base, tuned, rank="sampled", masks=False)
    assert {r["layer"] for r in sampled["tensors"] if r["rank"] is not None} == {0, 2, 4}


def test_layer_and_module_tables_sum_the_tensors(tmp_path, run):
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"]
    pairs = {n: realistic_pair((8, 8) if "proj" in n else (8,), torch.bfloat16, seed=i) for i, n in enumerate(names)}
    result = run(tmp_path, {n: p[0] for n, p in pairs.items()}, {n: p[1] for n, p in pairs.items()}, masks=False)
    layers = {(l["stack"], l["layer"]): l for l in result["layers"]}
    assert list(layers) == [("model.layers", 0), ("model.layers", 1), (None, None)]
    layers = {k[1]: v for k, v in layers.items()}
    recs = {r["name"]: r for r in result["tensors"]}
    assert layers[0]["changed"]["1e-05"] == recs[names[0]]["changed"]["1e-05"] + recs[names[1]]["changed"]["1e-05"]
    modules = {m["module"]: m for m in result["modules"]}
    assert modules["self_attn.q_proj"]["numel"] == 128 and modules["model.norm"]["numel"] == 8
    s = result["summary"]
    assert s["sparsity"]["1e-05"] == pytest.approx(1 - s["changed"]["1e-05"] / s["numel"])
    assert math.isclose(sum(l["numel"] for l in result["layers"]), s["numel"])


def _kernel_count(base, tuned, t, backend):
    """(changed at t through the tolerance table, through the chosen-tolerance mask) of one piece."""
    kernel = Kernel([t], t, torch.device("cpu"), backend)
    acc = kernel.start("x", tuple(base.shape), base.dtype, False)
    piece = kernel.measure(base, tuned, base.dtype, None, False)
    kernel.fold(acc, piece)
    return kernel.finish(acc)["changed"][repr(t)], int(piece.mask.sum())


# (base, tuned) values whose exact difference needs more bits than float32 has.
FAR_APART = [(2.0**-40, 2.0**-10), (-(2.0**-30), 0.5), (2.0**-24, 2.0**15)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("base_value, tuned_value", FAR_APART)
def test_delta_is_exact_when_exponents_are_far_apart(tmp_path, dtype, base_value, tuned_value, run, backend):
    """|Delta| > t decided on the exact difference, also where a float32 difference would round."""
    b = torch.tensor([base_value, tuned_value, base_value], dtype=dtype)
    u = torch.tensor([tuned_value, base_value, base_value], dtype=dtype)
    exact = float(u[0].double() - b[0].double())  # the stored values' difference, exact in float64
    edge = abs(tuned_value)  # t at the larger value: float32 would round |Delta| onto it
    tolerances = {np.nextafter(exact, 0.0), exact, np.nextafter(exact, math.inf),
                  np.nextafter(edge, 0.0), edge, np.nextafter(edge, math.inf)}
    for t in sorted(float(t) for t in tolerances):
        want = 2 * int(abs(exact) > t)  # the first two elements move by +-exact, the third not at all
        assert want == int(changed_mask(b, u, t).sum())  # the reference agrees
        assert _kernel_count(b, u, t, backend) == (want, want), (t, exact)
    result = run(tmp_path, {"w": b}, {"w": u}, tolerance=exact, masks=False)  # the whole path, at t = |Delta|
    assert result["summary"]["changed"][repr(exact)] == 0
    assert result["tensors"][0]["max_abs_delta"] == exact


def test_norms_accumulate_in_float64(tmp_path, small_pieces, run):
    """Many pieces of tiny and large squares: a float32 sum would be off by far more than 1e-12."""
    g = torch.Generator().manual_seed(9)
    base = (torch.randn(90, 70, generator=g) * torch.logspace(-6, 1, 70)).to(torch.bfloat16)
    tuned = torch.where(torch.rand(90, 70, generator=g) < 0.5, base, torch.nextafter(base, torch.zeros_like(base)))
    result = run(tmp_path, {"w": base}, {"w": tuned}, masks=False)
    assert_matches(result["tensors"][0], tensor_stats(base, tuned, EXACT_TOLERANCES, 1e-5), EXACT_TOLERANCES)
    s = result["summary"]
    assert math.isclose(s["delta_fro"], result["tensors"][0]["delta_fro"], rel_tol=1e-15)


def test_bf16_against_fp16_compares_in_float32_whichever_side_is_which(tmp_path, run):
    b, u = realistic_pair((33, 17), torch.float32, seed=12)
    b, u = b.to(torch.bfloat16), u.to(torch.float16)  # both sides exact in float32, neither in the other
    assert compare_dtype(torch.bfloat16, torch.float16) == compare_dtype(torch.float16, torch.bfloat16) == torch.float32
    one = run(tmp_path / "bu", {"w": b}, {"w": u}, masks=False)
    other = run(tmp_path / "ub", {"w": u}, {"w": b}, masks=False)
    for result, (x, y) in ((one, (b, u)), (other, (u, b))):
        rec = result["tensors"][0]
        assert rec["compare_dtype"] == "float32" and result["summary"]["dtype_mismatch"]
        assert_matches(rec, tensor_stats(*as_compared(x, y), EXACT_TOLERANCES, 1e-5), EXACT_TOLERANCES)
        assert result["unmatched"]["dtype_mismatch"][0]["compare_dtype"] == "float32"
        assert any("equal width" in w for w in result["warnings"])
    # base_fro is the base's own norm; everything about the update is the same whichever side is which
    same = lambda r: (r["changed"], r["curve_changed"], r["ulp"], r["nan"], r["delta_fro"], r["max_abs_delta"])  # noqa: E731
    assert same(one["tensors"][0]) == same(other["tensors"][0])
    assert 0 < one["summary"]["changed"]["1e-05"] < one["summary"]["numel"]


def test_f64_and_integer_tensors_are_reported_unsupported(tmp_path, run):
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    base = {"model.norm.weight": w, "wide": torch.ones(8, dtype=torch.float64), "ids": torch.arange(6),
            "mixed": torch.ones(3, dtype=torch.float32)}
    tuned = {"model.norm.weight": w * 2, "wide": torch.full((8,), 2.0, dtype=torch.float64), "ids": torch.arange(6) + 1,
             "mixed": torch.ones(3, dtype=torch.float64)}
    result = run(tmp_path, base, tuned, masks=False)
    assert [r["name"] for r in result["tensors"]] == ["model.norm.weight"]
    assert result["summary"]["numel"] == 16 and result["summary"]["changed"]["0.0"] == 16
    unsupported = {u["name"]: (u["base_dtype"], u["tuned_dtype"]) for u in result["unmatched"]["unsupported"]}
    assert unsupported == {"wide": ("F64", "F64"), "ids": ("I64", "I64"), "mixed": ("F32", "F64")}
    assert any("unsupported dtype" in w and "3 tensors" in w for w in result["warnings"])
    assert compare_dtype(torch.float64, torch.float64) is None and compare_dtype(torch.int64, torch.int64) is None


def test_vocab_shrink_reports_removed_rows_not_added(tmp_path, small_pieces, run):
    b, u = realistic_pair((56, 12), torch.bfloat16, seed=4)
    name = "model.embed_tokens.weight"
    result = run(tmp_path, {name: b}, {name: u[:50]})
    rec = result["tensors"][0]
    assert_matches(rec, tensor_stats(b[:50], u[:50], EXACT_TOLERANCES, 1e-5), EXACT_TOLERANCES)
    assert rec["numel"] == 50 * 12 and rec["shape"] == [50, 12]
    assert (rec["added"], rec["removed"]) == (0, 6 * 12)
    assert (result["summary"]["added"], result["summary"]["removed"]) == (0, 72)
    assert result["unmatched"]["resized"] == [
        {"name": name, "base_shape": [56, 12], "tuned_shape": [50, 12], "added": 0, "removed": 72}]
    assert any("removed" in w and "added" not in w for w in result["warnings"])
    assert load_masks(tmp_path / "masks" / "masks.safetensors")[name].shape == (50, 12)


def test_mask_file_bit_order_against_the_reference(tmp_path, small_pieces, run):
    """Read masks.safetensors without the engine: little-endian packbits of the flat float64 mask."""
    shapes = {"model.layers.0.mlp.up_proj.weight": (37, 29), "model.norm.weight": (13,), "scalar": (),
              "model.layers.0.conv.weight": (3, 5, 7), "model.embed_tokens.weight": (21, 6)}
    base, tuned = {}, {}
    for i, (name, shape) in enumerate(shapes.items()):
        base[name], tuned[name] = realistic_pair(shape, torch.bfloat16, seed=20 + i)
    tuned["model.embed_tokens.weight"] = torch.cat([tuned["model.embed_tokens.weight"], torch.ones(3, 6, dtype=torch.bfloat16)])
    chosen = 2e-6
    run(tmp_path, base, tuned, tolerance=chosen)
    path = tmp_path / "masks" / "masks.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        assert set(f.keys()) == set(shapes)
        assert f.metadata()["tolerance"] == repr(chosen)
        for name, shape in shapes.items():
            packed = f.get_tensor(name)
            n = math.prod(shape)
            assert packed.dtype == np.uint8 and packed.shape == ((n + 7) // 8,)
            bits = np.unpackbits(packed, bitorder="little")
            assert not bits[n:].any()  # padding bits are zero
            want = changed_mask(base[name], tuned[name][: shape[0]] if shape else tuned[name], chosen)
            assert np.array_equal(bits[:n].reshape(shape).astype(bool), want.numpy()), name
    loaded = load_masks(path)
    for name, shape in shapes.items():
        assert loaded[name].dtype == torch.bool and tuple(loaded[name].shape) == shape, name
    assert 0 < sum(int(m.sum()) for m in loaded.values()) < sum(m.numel() for m in loaded.values())


def test_bytes_read_counts_what_a_resumed_run_reads(tmp_path, backend):
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    pairs = {n: realistic_pair((32, 16), torch.bfloat16, seed=i) for i, n in enumerate(names)}
    write(tmp_path / "base", {n: p[0] for n, p in pairs.items()})
    write(tmp_path / "tuned", {n: p[1] for n, p in pairs.items()})

    def analyse(resume=None):
        records = []
        with open_source(parse_source(str(tmp_path / "base"), allow_any_path=True)) as b, open_source(
            parse_source(str(tmp_path / "tuned"), allow_any_path=True)
        ) as u:
            result = analyze(b, u, AnalysisOptions(device="cpu", backend=backend), resume=resume, on_tensor=records.append)
        return result, records

    full, records = analyse()
    compared = sum(r["numel"] for r in full["tensors"]) * 2 * 2  # two bf16 sides
    assert full["summary"]["bytes_read"] >= compared
    resumed, redone = analyse(resume={r["name"]: r for r in records[1:]})
    assert [r["name"] for r in redone] == [names[0]]
    assert 0 < resumed["summary"]["bytes_read"] < full["summary"]["bytes_read"]
    assert resumed["summary"]["changed"] == full["summary"]["changed"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1e-5, "1e-5", None])
def test_analysis_options_refuse_a_tolerance_that_is_not_finite_and_non_negative(bad):
    with pytest.raises(EngineError) as err:
        AnalysisOptions(tolerance=bad)
    assert err.value.code == "bad_request" and "tolerance" in err.value.message
    assert AnalysisOptions(tolerance=-0.0).tolerance == 0.0 and repr(AnalysisOptions(tolerance=0).tolerance) == "0.0"
