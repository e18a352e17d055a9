"""Quantized checkpoints on the engine's own terms: pieces of any size, and the packed formats it refuses.

The architecture-shaped pairs (DeepSeek-V3 fp8, gpt-oss MXFP4, fused qwen3_moe) are in
tests/corpus/test_formats.py; here the tensors are big enough to be read in several pieces
(an expert matrix of MXFP4 in two, an fp8 matrix in three) and are checked against a
dequantization written out independently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.engine import AnalysisOptions, EngineError, analyze, open_source, parse_source
from worker.engine.checkpoints.sources import Piece

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import changed_mask, delta64  # noqa: E402

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
KEYS = ["0.0", "1e-08", "1e-07", "1e-06", "1e-05", "0.0001", "0.001"]


def _write(directory: Path, state: dict, config: dict | None = None) -> Path:
    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def _open(path: Path):
    return open_source(parse_source(str(path), allow_any_path=True))


def fp8_reference(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float64)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            out[rows, cols] = q[rows, cols].double() * float(s[i, j])
    return out


def mxfp4_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[..., G, 16] bytes -> [..., G * 32] values: element 2k is the low nibble of byte k."""
    lo, hi = (blocks & 0x0F).long(), (blocks >> 4).long()
    codes = torch.stack((lo, hi), dim=-1).flatten(-2)  # [..., G, 32]
    values = torch.tensor(E2M1, dtype=torch.float64)[codes] * torch.pow(2.0, scales.double() - 127).unsqueeze(-1)
    return values.flatten(-2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An fp8 matrix in three pieces (partial 64-row/col edge blocks) and MXFP4 experts two pieces each."""
    root = tmp_path_factory.mktemp("quantized")
    g = torch.Generator().manual_seed(7)
    rows, cols, block = 1100, 1000, (128, 128)
    q = (torch.randn(rows, cols, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(-(-rows // 128), -(-cols // 128), generator=g) * 1e-3
    q2 = q.clone()
    q2.view(torch.uint8)[::97, ::13] ^= 1  # move some codes one step
    s2 = s.clone()
    s2[3, 7] *= 2  # a full block and ...
    s2[-1, -1] *= 0.5  # ... the partial corner block rescaled
    blocks = torch.randint(0, 256, (2, 1024, 32, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(118, 130, (2, 1024, 32), dtype=torch.uint8, generator=g)
    blocks2, scales2 = blocks.clone(), scales.clone()
    blocks2[1, 5, 3, 2] ^= 0x30  # one high nibble of expert 1
    blocks2[0, 700:, :, 0] ^= 0x01  # many low nibbles of expert 0
    scales2[0, 1000, 31] += 1
    flat_blocks = torch.randint(0, 256, (64, 4, 16), dtype=torch.uint8, generator=g)  # a 2-D MXFP4 matrix
    flat_scales = torch.randint(120, 128, (64, 4), dtype=torch.uint8, generator=g)
    flat_blocks2 = flat_blocks.clone()
    flat_blocks2[10:20] ^= 0x11
    names = ("model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.experts.gate_up_proj")
    config = {"model_type": "x", "quantization_config": {"quant_method": "fp8", "weight_block_size": list(block)}}
    sides = []
    flat = "model.layers.0.self_attn.o_proj"
    for side, (qq, ss, bb, cc, fb) in (("base", (q, s, blocks, scales, flat_blocks)),
                                       ("tuned", (q2, s2, blocks2, scales2, flat_blocks2))):
        state = {names[0]: qq, names[0] + "_scale_inv": ss, names[1] + "_blocks": bb, names[1] + "_scales": cc,
                 flat + "_blocks": fb, flat + "_scales": flat_scales,
                 "model.layers.0.input_layernorm.weight": torch.ones(16, dtype=torch.bfloat16)}
        sides.append(_write(root / side, state, config))
    values = {
        "base": {names[0]: fp8_reference(q, s, block), **_experts(names[1], mxfp4_reference(blocks, scales)),
                 flat: mxfp4_reference(flat_blocks, flat_scales)},
        "tuned": {names[0]: fp8_reference(q2, s2, block), **_experts(names[1], mxfp4_reference(blocks2, scales2)),
                  flat: mxfp4_reference(flat_blocks2, flat_scales)},
    }
    return sides[0], sides[1], values


def _experts(name: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = name.rsplit(".", 1)[0]
    return {f"{stem}.{e}.gate_up_proj": values[e].t() for e in range(values.shape[0])}  # transformers' [in, out]


def test_pieces_of_any_range_read_the_dequantized_values(pair):
    base_dir, _, values = pair
    with _open(base_dir) as src:
        assert "model.layers.0.mlp.down_proj.weight_scale_inv" not in src.tensors
        for name, want in values["base"].items():
            flat = want.reshape(-1)
            n = flat.numel()
            for start, stop in ((0, 1), (5, 4133), (n - 77, n), (min(123457, n - 9), min(600001, n)), (33, 35)):
                got = src.read_piece(Piece(name, start, stop))
                assert got.dtype == torch.float64 and torch.equal(got, flat[start:stop]), (name, start, stop)
            assert torch.equal(src.read(name), want), name


def test_analysis_of_pieces_matches_the_reference(pair):
    base_dir, tuned_dir, values = pair
    with _open(base_dir) as b, _open(tuned_dir) as t:
        infos = [*b.inner.tensors.values(), *t.inner.tensors.values()]
        stored = sum(i.nbytes for i in infos)
        scales = sum(i.nbytes for i in infos if i.name.endswith(("_scales", "_scale_inv")))
        result = analyze(b, t, AnalysisOptions(tolerance=1e-5))
    # Every code read once (changed codes are counted from the pass's pieces); scales (1/16 of MXFP4's
    # bytes, 1/16384 of fp8's) once more, to count the changed scale blocks.
    assert result["summary"]["bytes_read"] == stored + scales
    records = {r["name"]: r for r in result["tensors"]}
    assert set(records) == set(values["base"]) | {"model.layers.0.input_layernorm.weight"}
    for name, base in values["base"].items():
        tuned = values["tuned"][name]
        want = {k: int(changed_mask(base, tuned, float(k)).sum()) for k in KEYS}
        assert records[name]["changed"] == want, name
        assert records[name]["delta_fro"] == pytest.approx(float(delta64(base, tuned).norm()), rel=1e-9), name
    fp8 = records["model.layers.0.mlp.down_proj.weight"]["quantization"]
    assert fp8["scale_blocks"] == 9 * 8 and fp8["scale_blocks_changed"] == 2
    assert fp8["codes_changed"] == len(range(0, 1100, 97)) * len(range(0, 1000, 13))
    e0 = records["model.layers.0.mlp.experts.0.gate_up_proj"]["quantization"]
    e1 = records["model.layers.0.mlp.experts.1.gate_up_proj"]["quantization"]
    assert (e0["codes_changed"], e0["scale_blocks_changed"], e0["scale_blocks"]) == (324 * 32, 1, 1024 * 32)
    assert (e1["codes_changed"], e1["scale_blocks_changed"]) == (1, 0)
    o = records["model.layers.0.self_attn.o_proj"]
    assert o["shape"] == [64, 128] and o["quantization"]["codes_changed"] == 10 * 4 * 16 * 2


@pytest.mark.parametrize("what, state, config, named", [
    ("gptq config", {"model.layers.0.mlp.down_proj.weight": torch.zeros(4, 4)}, {"quantization_config": {"quant_method": "gptq"}}, "GPTQ"),
    ("awq config", {"model.layers.0.mlp.down_proj.weight": torch.zeros(4, 4)}, {"quantization_config": {"quant_method": "awq"}}, "AWQ"),
    ("packed names", {"model.layers.0.mlp.down_proj.qweight": torch.zeros(4, 4, dtype=torch.int32),
                      "model.layers.0.mlp.down_proj.qzeros": torch.zeros(1, 4, dtype=torch.int32),
                      "model.layers.0.mlp.down_proj.scales": torch.zeros(1, 4, dtype=torch.float16)}, None, "GPTQ/AWQ"),
])
def test_packed_integer_formats_are_refused_by_name(tmp_path, what, state, config, named):
    directory = _write(tmp_path / "m", state, config)
    with pytest.raises(EngineError) as err:
        _open(directory)
    assert err.value.code == "unsupported_format" and named in err.value.message, what


def test_gguf_only_directory_is_refused_by_name(tmp_path):
    (tmp_path / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EngineError) as err:
        _open(tmp_path)
    assert err.value.code == "unsupported_format" and "GGUF" in err.value.message and "model-Q4_K_M.gguf" in err.value.message


def test_block_scales_without_a_block_size_are_malformed(tmp_path):
    state = {"w.weight": torch.zeros(4, 4).to(torch.float8_e4m3fn), "w.weight_scale_inv": torch.ones(1, 1)}
    with pytest.raises(EngineError) as err:
        _open(_write(tmp_path / "m", state, {"quantization_config": {"quant_method": "fp8"}}))
    assert err.value.code == "malformed" and "weight_block_size" in err.value.message


def test_the_same_pair_over_the_loopback_hub_gives_the_same_records(pair, tmp_path, hf_env):
    """Scales are read with range requests of their own while the weights stream: same records as local."""
    import shutil

    from hubserver import HubServer  # tests/ is on sys.path (tests/conftest.py's directory)

    from worker.engine import SourceSpec

    base_dir, tuned_dir, _ = pair
    repos = tmp_path / "repos"
    shutil.copytree(base_dir, repos / "org" / "q-base")
    shutil.copytree(tuned_dir, repos / "org" / "q-tuned")
    with _open(base_dir) as b, _open(tuned_dir) as t:
        local = analyze(b, t, AnalysisOptions(tolerance=1e-5))
    with HubServer(repos) as server, server.endpoint():
        with open_source(SourceSpec("hub", "org/q-base", None, display="org/q-base")) as b, \
                open_source(SourceSpec("hub", "org/q-tuned", None, display="org/q-tuned")) as t:
            hub = analyze(b, t, AnalysisOptions(tolerance=1e-5))
    assert hub["tensors"] == local["tensors"]


def test_parts_of_a_quantized_pair_give_the_one_pass_result(pair):
    """Fan-out runs tensor groups on several workers: each part reads its experts and scales alone."""
    from worker.engine.analysis import analyze_part, finish, plan_analysis

    base_dir, tuned_dir, _ = pair
    options = AnalysisOptions(tolerance=1e-5)
    with _open(base_dir) as b, _open(tuned_dir) as t:
        whole = analyze(b, t, options)
        plan = plan_analysis(b, t, options)
        names = [p.name for p in plan.pairing.pairs]
        records = {}
        for part in (names[::2], names[1::2]):  # expert 1 without expert 0 in one part
            records.update(analyze_part(b, t, options, only=part, plan=plan).records)
        merged = finish(b, t, options, records, plan=plan)
    assert merged["tensors"] == whole["tensors"] and merged["modules"] == whole["modules"]
