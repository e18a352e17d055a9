"""Block-scaled fp8, MXFP4 and fused experts (tests/corpus/formats.py) against a float64 reference.

The reference dequantizes with transformers' own code (`_dequantize_fp8_weight`,
`convert_moe_packed_tensors`, in float64), splits fused expert tensors itself, and recomputes
every per-tensor count with tests/engine/reference.py. It shares no code with the engine.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from worker.engine import EXACT_TOLERANCES, AnalysisOptions, analyze, open_source, parse_source

from .formats import FORMAT_ORDER, build_formats
from .test_corpus import expected_location, load_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from reference import changed_mask, delta64, tensor_stats  # noqa: E402  (tests/engine/reference.py)

TOLERANCE = 1e-5
KEYS = [repr(float(t)) for t in EXACT_TOLERANCES]
_FUSED = re.compile(r"^(.*\.experts)\.([A-Za-z_]\w*)$")


@pytest.fixture(scope="session")
def formats(tmp_path_factory):
    return build_formats(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="session")
def analyses(formats):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            e = formats[name]
            with open_source(parse_source(str(e.base_dir), allow_any_path=True)) as b, \
                    open_source(parse_source(str(e.tuned_dir), allow_any_path=True)) as u:
                cache[name] = analyze(b, u, AnalysisOptions(tolerance=TOLERANCE, rank="all", geometry="all"))
        return cache[name]

    return get


def reference_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The model's weights by name: fp8 blocks and MXFP4 dequantized in float64, fused experts split."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    state = load_state(directory)
    block = (json.loads((directory / "config.json").read_text()).get("quantization_config") or {}).get("weight_block_size")
    weights = {}
    for name, t in state.items():
        if name.endswith(("_scale_inv", "_scales")):
            continue
        if name + "_scale_inv" in state:
            weights[name] = _dequantize_fp8_weight(t, state[name + "_scale_inv"], block, torch.float64)
        elif name.endswith("_blocks"):
            weights[name[:-7]] = convert_moe_packed_tensors(t, state[name[:-7] + "_scales"], dtype=torch.float64)
        else:
            weights[name] = t
    out = {}
    for name, t in weights.items():
        m = _FUSED.match(name)
        if m and (t.dim() == 3 or (t.dim() == 2 and m[2].endswith("_bias"))):
            param = m[2][:-5] + ".bias" if m[2].endswith("_bias") else m[2]
            out.update({f"{m[1]}.{e}.{param}": t[e] for e in range(t.shape[0])})
        else:
            out[name] = t
    return out


def value_stats(b: torch.Tensor, t: torch.Tensor) -> dict:
    """tensor_stats' numbers for values compared in float64 (no ULP view: float64 steps mean nothing here)."""
    d = delta64(b, t)
    mask = changed_mask(b, t, TOLERANCE)
    out = {"changed": {k: int(changed_mask(b, t, float(k)).sum()) for k in KEYS}, "nan": int(torch.isnan(d).sum()),
           "delta_fro": float(d.double().norm()), "base_fro": float(b.double().norm()),
           "max_abs_delta": float(d.abs().max())}
    if b.dim() == 2:
        out.update(row_coverage=float(mask.any(dim=1).double().mean()), col_coverage=float(mask.any(dim=0).double().mean()),
                   rank=int(torch.linalg.matrix_rank(torch.nan_to_num(d).float())))
    return out


@pytest.mark.parametrize("name", FORMAT_ORDER)
def test_every_count_matches_the_float64_reference(formats, analyses, name):
    e = formats[name]
    result = analyses(name)
    base, tuned = reference_weights(e.base_dir), reference_weights(e.tuned_dir)
    assert not result["unmatched"]["only_base"] and not result["unmatched"]["only_tuned"]
    assert not result["unmatched"]["unsupported"] and not result["unmatched"]["shape_mismatch"]
    records = {r["name"]: r for r in result["tensors"]}
    assert set(records) == set(base) == set(tuned)
    totals = dict.fromkeys(KEYS, 0)
    for n, rec in records.items():
        b, t = base[n], tuned[n]
        decoded = torch.float64 in (b.dtype, t.dtype)
        ref = value_stats(b.double(), t.double()) if decoded else tensor_stats(
            b, t, EXACT_TOLERANCES, TOLERANCE, want_rank=b.dim() == 2)
        assert rec["numel"] == b.numel() and rec["shape"] == list(b.shape), n
        assert rec["compare_dtype"] == ("float64" if decoded else "bfloat16" if b.dtype == torch.bfloat16 else
                                        str(b.dtype).removeprefix("torch.")), n
        assert rec["changed"] == ref["changed"] and rec["nan"] == ref["nan"] == 0, n
        assert rec["delta_fro"] == pytest.approx(ref["delta_fro"], rel=1e-9, abs=1e-30), n
        assert rec["base_fro"] == pytest.approx(ref["base_fro"], rel=1e-9, abs=1e-30), n
        assert rec["max_abs_delta"] == ref["max_abs_delta"], n
        if not decoded:
            assert rec["ulp"] == ref["ulp"], n
        if b.dim() == 2:
            assert rec["row_coverage"] == pytest.approx(ref["row_coverage"], abs=1e-12), n
            assert rec["col_coverage"] == pytest.approx(ref["col_coverage"], abs=1e-12), n
            assert rec["rank"] == ref["rank"] and rec["geometry"] is not None, n
        assert (rec["stack"], rec["layer"], rec["module"], rec["expert"]) == expected_location(n), n
        for k in KEYS:
            totals[k] += ref["changed"][k]
    assert result["summary"]["changed"] == totals
    assert result["summary"]["numel"] == sum(x.numel() for x in base.values())
    assert 0 < totals["1e-05"] < result["summary"]["numel"]


def test_deepseek_v3_block_scales(formats, analyses):
    """One changed scale per matrix: its whole (partial) block changes value; scales are not elements."""
    e = formats["deepseek_v3"]
    result = analyses("deepseek_v3")
    stored_b, stored_t = load_state(e.base_dir), load_state(e.tuned_dir)
    records = {r["name"]: r for r in result["tensors"]}
    assert not any(n.endswith("_scale_inv") for n in records)
    quantized = {n: r for n, r in records.items() if "quantization" in r}
    assert len(quantized) == sum(1 for n in stored_b if n.endswith("_scale_inv")) > 30
    for n, r in quantized.items():
        q = r["quantization"]
        assert q["base"] == q["tuned"] == "fp8 e4m3, 128x128 f32 scales", n
        scales = stored_b[n + "_scale_inv"]
        assert q["scale_blocks"] == scales.numel() and q["scale_blocks_changed"] == 1, n
        codes = stored_b[n].view(torch.uint8) != stored_t[n].view(torch.uint8)
        assert q["codes_changed"] == int(codes.sum()), n
        # The changed (last, partial) block: every nonzero element whose code stayed changed value.
        rows, cols = stored_b[n].shape
        r0, c0 = (scales.shape[0] - 1) * 128, (scales.shape[1] - 1) * 128
        qb, qt = stored_b[n][r0:, c0:].float(), stored_t[n][r0:, c0:].float()
        kept = (qb != 0) & (qb == qt)
        assert kept.any(), n
        assert ((qb * float(scales[-1, -1])) != (qt * float(stored_t[n + "_scale_inv"][-1, -1])))[kept].all(), n
        assert rows % 128 or cols % 128 or (rows, cols) == (128, 128), n  # partial edge blocks are exercised
    modules = {(r["layer"], r["module"]) for r in records.values()}
    for m in ("self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa", "self_attn.kv_b_proj",
              "mlp.experts.*.gate_proj", "mlp.experts.*.down_proj", "mlp.shared_experts.up_proj",
              "mlp.gate.e_score_correction_bias", "eh_proj", "shared_head.head", "enorm"):
        assert any(mod == m for _, mod in modules), m
    assert {layer for layer, m in modules if m == "eh_proj"} == {2}, "the MTP layer is layer 2"
    # The raw-code view alone would miss most of the update (the issue: 208,261 codes vs 761,209 values).
    codes = sum(r["quantization"]["codes_changed"] for r in quantized.values())
    values = sum(r["changed"]["0.0"] for r in quantized.values())
    assert codes < values


def test_one_side_fp8_the_other_bf16_compares_values(formats, analyses):
    result = analyses("deepseek_v3_bf16")
    mismatch = result["unmatched"]["dtype_mismatch"]
    assert mismatch and all(d["compare_dtype"] == "float64" and d["base_dtype"].startswith("fp8 e4m3")
                            and d["tuned_dtype"] == "BF16" for d in mismatch)
    assert any("dequantized and compared on their values" in w for w in result["warnings"])
    q = [r["quantization"] for r in result["tensors"] if "quantization" in r]
    assert q and all(x["tuned"] is None and "codes_changed" not in x for x in q)


def test_mxfp4_against_its_bf16_dequantization_is_the_same_update(analyses):
    """gpt_oss_bf16's finetune is gpt_oss's dequantized exactly: every count is the same."""
    mx, bf = analyses("gpt_oss"), analyses("gpt_oss_bf16")
    for a, b in zip(mx["tensors"], bf["tensors"]):
        assert a["name"] == b["name"] and a["changed"] == b["changed"] and a["delta_fro"] == b["delta_fro"], a["name"]
    experts = [r for r in mx["tensors"] if "quantization" in r]
    assert len(experts) == 2 * 2 * 4  # 2 layers x (gate_up, down) x 4 experts, each its own record
    for r in experts:
        q = r["quantization"]
        assert q["base"] == q["tuned"] == "mxfp4 e2m1, e8m0 scales per 32"
        assert q["scale_blocks"] == r["numel"] // 32 and q["scale_blocks_changed"] == 1 and q["codes_changed"] > 0
        assert r["module"] in ("mlp.experts.*.gate_up_proj", "mlp.experts.*.down_proj")


def test_fused_experts_are_per_expert_records(formats, analyses):
    result = analyses("qwen3_moe_fused")
    experts = [r for r in result["tensors"] if r["expert"] is not None]
    assert {(r["layer"], r["module"]) for r in experts} == {
        (layer, m) for layer in (0, 1) for m in ("mlp.experts.*.gate_up_proj", "mlp.experts.*.down_proj")}
    for r in experts:
        assert r["shape"] == ([32, 32] if "gate_up" in r["module"] else [32, 16])
        assert r["rank"] is not None and r["geometry"] is not None
    assert {r["expert"] for r in experts} == set(range(formats["qwen3_moe_fused"].experts))
    by_module = {m["module"]: m for m in result["modules"]}
    assert by_module["mlp.experts.*.gate_up_proj"]["numel"] == 2 * 4 * 32 * 32
