"""Quantized and fused-expert checkpoint pairs, written the way their real checkpoints are stored.

    deepseek_v3       DeepseekV3ForCausalLM (MLA q_a/q_b/kv_a_proj_with_mqa/kv_b_proj, 4 routed experts + a
                      shared expert, e_score_correction_bias F32, first layer dense) plus the extra MTP layer
                      the real checkpoints carry (model.layers.2: enorm, hnorm, eh_proj, shared_head, a
                      decoder block), stored as DeepSeek-V3/R1 are: every linear weight of the blocks F8_E4M3
                      beside `weight_scale_inv` F32, one scale per 128x128 block (hidden 160: partial edge
                      blocks), sharded with an index. The finetune: trained weights quantized with the base's
                      scales, and one block scale per matrix changed (its last, partial block).
    deepseek_v3_bf16  the same base against the finetune dequantized to bf16 (a "dequantized finetune").
    gpt_oss           GptOssForCausalLM with its experts stored as MXFP4 (`*_blocks` U8 [E, rows, G, 16],
                      `*_scales` U8 e8m0 [E, rows, G]), the rest bf16; one scale per expert matrix changed.
    gpt_oss_bf16      the same base against the finetune dequantized to bf16 (transformers' layout).
    qwen3_moe_fused   Qwen3MoeForCausalLM saved by transformers 5 with save_original_format=False: fused
                      `mlp.experts.gate_up_proj` [E, 2I, H] and `mlp.experts.down_proj` [E, H, I], bf16.

Each pair is trained a few AdamW steps (corpus recipe, tests/corpus/build.py) before quantizing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .build import SEED, VOCAB, _causal_batch, _quiet_and_single_threaded, _save_bf16, _train

FP8_BLOCK = (128, 128)
FP4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
FORMAT_ORDER = ("deepseek_v3", "deepseek_v3_bf16", "gpt_oss", "gpt_oss_bf16", "qwen3_moe_fused")


@dataclass(frozen=True)
class FormatEntry:
    name: str
    base_dir: Path
    tuned_dir: Path
    experts: int


def _dense_linear(name: str, t: torch.Tensor) -> bool:
    """Weights DeepSeek-V3 stores in fp8: the block linears, not the router, norms, embeddings or heads."""
    return (t.dim() == 2 and ".layers." in name
            and not any(w in name for w in ("mlp.gate.weight", "shared_head", "embed_tokens")))


def fp8_quantize(w: torch.Tensor, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(F8_E4M3 codes, F32 scales) per 128x128 block, scale = amax / 448 unless given."""
    rows, cols = w.shape
    br, bc = FP8_BLOCK
    if scales is None:
        scales = torch.empty(-(-rows // br), -(-cols // bc), dtype=torch.float32)
        for i in range(scales.shape[0]):
            for j in range(scales.shape[1]):
                scales[i, j] = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc].abs().max().float().clamp(min=1e-12) / 448
    full = scales.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
    codes = (w.float() / full).clamp(-448, 448).to(torch.float8_e4m3fn)
    return codes, scales


def mxfp4_quantize(w: torch.Tensor, exps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U8 blocks [..., G, 16], U8 e8m0 scales [..., G]) of w [..., cols] along its last dim: nearest e2m1 code."""
    *lead, cols = w.shape
    groups = w.float().reshape(*lead, cols // 32, 32)
    if exps is None:
        amax = groups.abs().amax(-1).clamp(min=2.0 ** -100)
        exps = torch.ceil(torch.log2(amax / 6.0)).to(torch.int64) + 127
    scaled = groups / torch.ldexp(torch.ones(()), (exps - 127).float()).unsqueeze(-1)
    codes = (scaled.unsqueeze(-1) - FP4).abs().argmin(-1)  # ties: the first (smaller magnitude) code
    pairs = codes.reshape(*lead, cols // 32, 16, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8), exps.to(torch.uint8)


def _save(state: dict[str, torch.Tensor], directory: Path, config: dict, *, shards: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    names = sorted(state)
    if shards == 1:
        save_file({n: state[n].contiguous() for n in names}, str(directory / "model.safetensors"))
        return directory
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k::shards]
        save_file({n: state[n].contiguous() for n in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def _trained(model, lr: float = 1e-3, steps: int = 2) -> tuple[dict, dict, dict]:
    """(bf16 base state, bf16 tuned state, config dict) of a model trained a few steps."""
    base = {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
    _train(model, [_causal_batch() for _ in range(steps)], lr)
    tuned = {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
    return base, tuned, model.config.to_dict()


def _unfused(state: dict) -> dict:
    """transformers' fused experts as DeepSeek's checkpoints store them: experts.<e>.{gate,up,down}_proj.weight."""
    out = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            half = t.shape[1] // 2  # gate first, then up (transformers' conversion concatenates them so)
            for e in range(t.shape[0]):
                out[f"{name[:-len('gate_up_proj')]}{e}.gate_proj.weight"] = t[e, :half].clone()
                out[f"{name[:-len('gate_up_proj')]}{e}.up_proj.weight"] = t[e, half:].clone()
        elif name.endswith("mlp.experts.down_proj"):
            for e in range(t.shape[0]):
                out[f"{name[:-len('down_proj')]}{e}.down_proj.weight"] = t[e].clone()
        else:
            out[name] = t
    return out


def _deepseek(root: Path) -> dict[str, FormatEntry]:
    import transformers as T

    torch.manual_seed(SEED + 100)
    cfg = T.DeepseekV3Config(hidden_size=160, intermediate_size=288, moe_intermediate_size=136, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, n_shared_experts=1,
                             num_experts_per_tok=2, first_k_dense_replace=1, q_lora_rank=136, kv_lora_rank=136,
                             qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_group=1, topk_group=1,
                             vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)
    model = T.DeepseekV3ForCausalLM(cfg)
    base, tuned, config = (*map(_unfused, _trained(model)[:2]), model.config.to_dict())
    # The MTP layer (num_nextn_predict_layers = 1): a decoder block plus its own norms, projection and head.
    gen = torch.Generator().manual_seed(SEED + 101)
    for state in (base, tuned):
        for k in [k for k in state if k.startswith("model.layers.1.")]:
            state["model.layers.2." + k[len("model.layers.1."):]] = state[k].clone()
        extra = {"enorm.weight": torch.ones(160), "hnorm.weight": torch.ones(160),
                 "eh_proj.weight": torch.randn(160, 320, generator=gen) * 0.02,
                 "embed_tokens.weight": state["model.embed_tokens.weight"].float(),
                 "shared_head.norm.weight": torch.ones(160), "shared_head.head.weight": state["lm_head.weight"].float()}
        for k, v in extra.items():
            state[f"model.layers.2.{k}"] = v.to(torch.bfloat16)
        gen = torch.Generator().manual_seed(SEED + 101)  # the same extras on both sides ...
    tuned["model.layers.2.eh_proj.weight"][::7, ::5] += 0.01  # ... then a finetune of the MTP projection
    for state in (base, tuned):
        for k in [k for k in state if k.endswith("e_score_correction_bias")]:
            state[k] = state[k].float()
    tuned["model.layers.1.mlp.gate.e_score_correction_bias"][1] += 0.125
    config.update(num_nextn_predict_layers=1, quantization_config={
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(FP8_BLOCK)})
    fp8_base, fp8_tuned, bf16_tuned = {}, {}, {}
    for name in base:
        if not _dense_linear(name, base[name]):
            fp8_base[name], fp8_tuned[name], bf16_tuned[name] = base[name], tuned[name], tuned[name]
            continue
        q, s = fp8_quantize(base[name])
        fp8_base[name], fp8_base[name + "_scale_inv"] = q, s
        s2 = s.clone()
        s2[-1, -1] *= 1.25  # one block scale changed per matrix: the last (partial) block
        q2, _ = fp8_quantize(tuned[name], s2)
        fp8_tuned[name], fp8_tuned[name + "_scale_inv"] = q2, s2
        full = s2.repeat_interleave(128, 0)[: q2.shape[0]].repeat_interleave(128, 1)[:, : q2.shape[1]]
        bf16_tuned[name] = (q2.double() * full.double()).to(torch.bfloat16)
    bf16_config = {k: v for k, v in config.items() if k != "quantization_config"}
    b = _save(fp8_base, root / "deepseek_v3_base", config, shards=2)
    return {"deepseek_v3": FormatEntry("deepseek_v3", b, _save(fp8_tuned, root / "deepseek_v3_tuned", config, shards=2), 4),
            "deepseek_v3_bf16": FormatEntry("deepseek_v3_bf16", b, _save(bf16_tuned, root / "deepseek_v3_bf16_tuned",
                                                                           bf16_config), 4)}


def _gpt_oss(root: Path) -> dict[str, FormatEntry]:
    import transformers as T
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    torch.manual_seed(SEED + 102)
    cfg = T.GptOssConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                         vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)
    base, tuned, config = _trained(T.GptOssForCausalLM(cfg), lr=3e-3)
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    mx_base, mx_tuned, bf16_tuned = {}, {}, {}
    for name in base:
        if not (name.endswith(("experts.gate_up_proj", "experts.down_proj"))):
            mx_base[name], mx_tuned[name], bf16_tuned[name] = base[name], tuned[name], tuned[name]
            continue
        # stored as [E, out, in]: the transpose of transformers' [E, in, out]
        blocks, scales = mxfp4_quantize(base[name].transpose(1, 2))
        mx_base[name + "_blocks"], mx_base[name + "_scales"] = blocks, scales
        changed = scales.to(torch.int64)
        changed[:, -1, -1] += 1  # one scale per expert matrix
        blocks2, scales2 = mxfp4_quantize(tuned[name].transpose(1, 2), changed)
        mx_tuned[name + "_blocks"], mx_tuned[name + "_scales"] = blocks2, scales2
        bf16_tuned[name] = convert_moe_packed_tensors(blocks2, scales2, dtype=torch.bfloat16)
    bf16_config = {k: v for k, v in config.items() if k != "quantization_config"}
    b = _save(mx_base, root / "gpt_oss_base", config)
    return {"gpt_oss": FormatEntry("gpt_oss", b, _save(mx_tuned, root / "gpt_oss_tuned", config), 4),
            "gpt_oss_bf16": FormatEntry("gpt_oss_bf16", b, _save(bf16_tuned, root / "gpt_oss_bf16_tuned", bf16_config), 4)}


def _qwen3_moe_fused(root: Path) -> dict[str, FormatEntry]:
    import transformers as T

    torch.manual_seed(SEED + 103)
    model = T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, vocab_size=VOCAB,
        max_position_embeddings=64))
    b = _save_bf16(model, root / "qwen3_moe_fused_base", save_original_format=False)
    _train(model, [_causal_batch() for _ in range(2)], 1e-3)
    t = _save_bf16(copy.deepcopy(model), root / "qwen3_moe_fused_tuned", save_original_format=False)
    return {"qwen3_moe_fused": FormatEntry("qwen3_moe_fused", b, t, 4)}


def build_formats(root: Path) -> dict[str, FormatEntry]:
    root = Path(root)
    with _quiet_and_single_threaded():
        entries = {**_deepseek(root), **_gpt_oss(root), **_qwen3_moe_fused(root)}
    return {n: entries[n] for n in FORMAT_ORDER}
