"""The precision view (metrics.md, "Precision and magnitude", "Similarity") against the brute-force
float64 reference (reference.precision_stats), on both kernel backends, through the whole pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import precision_stats
from test_kernel_reference import realistic_pair, write

from worker.engine import EXACT_TOLERANCES, AnalysisOptions, analyze, open_source, parse_source
from worker.engine import analysis as analysis_module
from worker.engine.kernel.bins import MAG_OFFSET

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]
KEYS = [repr(float(t)) for t in EXACT_TOLERANCES]


@pytest.fixture(params=["numba", "torch"])
def backend(request):
    return request.param


def analyse(tmp_path, base_state, tuned_state, backend):
    b = open_source(parse_source(str(write(tmp_path / "base", base_state)), allow_any_path=True))
    u = open_source(parse_source(str(write(tmp_path / "tuned", tuned_state)), allow_any_path=True))
    with b, u:
        return analyze(b, u, AnalysisOptions(device="cpu", backend=backend))


def assert_precision(record, ref):
    p = record["precision"]
    assert dict(zip(p["bins"], p["compared"])) == ref["compared"], record["name"]
    for key in KEYS:
        assert {b: c for b, c in zip(p["bins"], p["changed"][key]) if c} == ref["changed"][key], (record["name"], key)
    assert {(b, k): c for b, k, c in p["ratio"]} == ref["ratio"], record["name"]
    assert p["counterfactual"] == ref["counterfactual"], record["name"]
    if ref["cosine"] is None:
        assert record["cosine"] is None
    else:
        assert math.isclose(record["cosine"], ref["cosine"], rel_tol=0, abs_tol=1e-14), (record["cosine"], ref["cosine"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_every_precision_number_matches_the_float64_reference(tmp_path, monkeypatch, backend, dtype):
    monkeypatch.setattr(analysis_module, "PIECE_ELEMENTS", 300)  # many pieces per tensor
    shapes = {"model.layers.0.mlp.up_proj.weight": (37, 29), "model.layers.1.mlp.up_proj.weight": (16, 61),
              "model.norm.weight": (53,)}
    base, tuned = {}, {}
    for i, (name, shape) in enumerate(shapes.items()):
        base[name], tuned[name] = realistic_pair(shape, dtype, seed=10 + i)
    base["model.norm.weight"][:3] = 0.0  # zeros have their own bin
    if dtype.itemsize >= 2:
        base["model.norm.weight"][3] = torch.finfo(dtype).tiny / 4  # a subnormal
    result = analyse(tmp_path, base, tuned, backend)
    records = {r["name"]: r for r in result["tensors"]}
    for name in shapes:
        assert_precision(records[name], precision_stats(base[name], tuned[name], EXACT_TOLERANCES))
    # the model and the module rows add the tensors up
    s = result["summary"]["precision"]
    assert sum(s["compared"]) == result["summary"]["numel"]
    for key in KEYS:
        assert sum(s["changed"][key]) == result["summary"]["changed"][key]
    up = next(m for m in result["modules"] if m["module"] == "mlp.up_proj")["precision"]
    assert sum(up["compared"]) == 37 * 29 + 16 * 61
    assert s["labels"][s["bins"].index(MAG_OFFSET - 6)] == "2^-6"
    moved = [sum(row) for row in s["ratio"]["counts"]]
    assert sum(moved) == result["summary"]["changed"]["0.0"] - result["summary"]["nan"]
    if dtype in (torch.float32, torch.float16):
        assert s["counterfactual"]["bfloat16"]["numel"] == result["summary"]["numel"]
        assert s["counterfactual"]["bfloat16"]["stored"] == result["summary"]["changed"]
    else:
        assert s["counterfactual"] == {}
    ref_all = precision_stats(torch.cat([base[n].flatten().float() for n in shapes]).to(dtype),
                              torch.cat([tuned[n].flatten().float() for n in shapes]).to(dtype), EXACT_TOLERANCES)
    assert math.isclose(s["cosine"], ref_all["cosine"], rel_tol=0, abs_tol=1e-14)


def test_fp32_pair_where_a_known_share_sits_below_half_a_bf16_step(tmp_path, backend):
    """Base values on the bf16 grid; 30 % of the elements move out by less than half a bf16 step
    (bf16 storage would erase them), 20 % by one to three steps (it would keep them)."""
    g = torch.Generator().manual_seed(3)
    n_rows, n_cols = 64, 125
    base = (torch.randn(n_rows, n_cols, generator=g) * 0.02).to(torch.bfloat16).float()
    # the bf16 step at |base|, signed away from zero: moving outwards never enters a finer binade
    spacing = torch.ldexp(torch.ones_like(base), torch.frexp(base)[1] - 8) * torch.sign(base)
    pick = torch.rand(n_rows, n_cols, generator=g)
    small, large = pick < 0.3, (pick >= 0.3) & (pick < 0.5)
    tuned = torch.where(small, base + spacing * (0.05 + 0.4 * torch.rand(n_rows, n_cols, generator=g)), base)
    tuned = torch.where(large, base + spacing * (1 + 2 * torch.rand(n_rows, n_cols, generator=g)), tuned)
    assert bool((tuned[small] != base[small]).all())  # every small move is a real fp32 change
    result = analyse(tmp_path, {"model.layers.0.mlp.up_proj.weight": base},
                     {"model.layers.0.mlp.up_proj.weight": tuned}, backend)
    cf = result["summary"]["precision"]["counterfactual"]["bfloat16"]
    n_small, n_large = int(small.sum()), int(large.sum())
    assert cf["stored"]["0.0"] == n_small + n_large
    assert cf["rounded"]["0.0"] == n_large  # exactly the sub-half-step updates are erased
    ref = precision_stats(base, tuned, EXACT_TOLERANCES)
    assert cf["rounded"] == ref["counterfactual"]["bfloat16"]
    assert result["summary"]["precision"]["counterfactual"]["float16"]["rounded"] == ref["counterfactual"]["float16"]
    assert_precision(result["tensors"][0], ref)


def test_cosine_is_accumulated_in_float64(tmp_path, backend):
    """A float32 accumulation reads 1.0 here; the float64 sums give the exact cosine's digits."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(200_000, generator=g) * 0.02
    tuned = base + torch.randn(200_000, generator=g) * 0.02 * 4e-3
    b32, u32 = base.float(), tuned.float()
    float32_cosine = float(torch.dot(b32, u32) / torch.sqrt(torch.dot(b32, b32) * torch.dot(u32, u32)))
    result = analyse(tmp_path, {"w": base}, {"w": tuned}, backend)
    truth = precision_stats(base, tuned, [0.0])["cosine"]
    assert 1 - truth > 1e-6
    assert math.isclose(result["tensors"][0]["cosine"], truth, rel_tol=0, abs_tol=1e-14)
    assert abs(float32_cosine - truth) > 100 * abs(result["tensors"][0]["cosine"] - truth)


def test_bf16_pairs_get_no_counterfactual_and_one_step_shares_by_magnitude(tmp_path, backend):
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(4000, generator=g) * 0.02).to(torch.bfloat16)
    tuned = torch.where(torch.rand(4000, generator=g) < 0.3, torch.nextafter(base, torch.ones_like(base)), base)
    result = analyse(tmp_path, {"w": base}, {"w": tuned}, backend)
    s = result["summary"]["precision"]
    assert s["counterfactual"] == {}
    shares = [x for x in s["one_step_share"] if x is not None]
    assert shares and all(x == 1.0 for x in shares)  # every move is one step (upwards: never across a binade down)
    assert np.sum(s["ratio"]["counts"]) == result["summary"]["changed"]["0.0"]
