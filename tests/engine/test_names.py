"""Names: (stack, N) and module from real checkpoints' tensor names; prefix and tie matching."""

from __future__ import annotations

import pytest
import torch

from worker.engine.pairing.location import Location, locate
from worker.engine.pairing.names import match_names, ties_embeddings


@pytest.mark.parametrize("name, where", [
    ("model.layers.3.self_attn.q_proj.weight", Location("model.layers", 3, "self_attn.q_proj")),
    ("model.layers.3.self_attn.qkv_proj.weight", Location("model.layers", 3, "self_attn.qkv_proj")),
    ("transformer.h.11.attn.c_attn.bias", Location("transformer.h", 11, "attn.c_attn")),
    ("gpt_neox.layers.0.attention.query_key_value.weight", Location("gpt_neox.layers", 0, "attention.query_key_value")),
    # BERT: the attention's output projection and the block's output projection are different modules.
    ("bert.encoder.layer.2.attention.output.dense.weight", Location("bert.encoder.layer", 2, "attention.output.dense")),
    ("bert.encoder.layer.2.output.dense.weight", Location("bert.encoder.layer", 2, "output.dense")),
    ("bert.encoder.layer.2.output.LayerNorm.gamma", Location("bert.encoder.layer", 2, "output.LayerNorm")),
    # T5: the block's inner `layer.N` is part of the module, not a stack of its own.
    ("encoder.block.1.layer.0.SelfAttention.q.weight", Location("encoder.block", 1, "layer.0.SelfAttention.q")),
    ("decoder.block.1.layer.2.DenseReluDense.wo.weight", Location("decoder.block", 1, "layer.2.DenseReluDense.wo")),
    ("model.layers.0.block_sparse_moe.experts.7.w1.weight",
     Location("model.layers", 0, "block_sparse_moe.experts.*.w1", expert=7)),
    ("model.layers.5.mlp.experts.12.down_proj.weight", Location("model.layers", 5, "mlp.experts.*.down_proj", expert=12)),
    ("model.layers.5.mlp.shared_expert.up_proj.weight", Location("model.layers", 5, "mlp.shared_expert.up_proj")),
    ("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
     Location("model.vision_tower.vision_model.encoder.layers", 0, "mlp.fc1")),
    ("model.language_model.layers.1.mlp.up_proj.weight", Location("model.language_model.layers", 1, "mlp.up_proj")),
    ("visual.blocks.4.attn.qkv.weight", Location("visual.blocks", 4, "attn.qkv")),
    # Outside any stack: the full path; a projector's Sequential index is not a layer.
    ("lm_head.weight", Location(None, None, "lm_head")),
    ("model.norm.weight", Location(None, None, "model.norm")),
    ("visual.merger.mlp.0.weight", Location(None, None, "visual.merger.mlp.0")),
    ("model.multi_modal_projector.linear_1.bias", Location(None, None, "model.multi_modal_projector.linear_1")),
    ("model.layers.0.self_attn.q_proj.weight_scale_inv", Location("model.layers", 0, "self_attn.q_proj")),
])
def test_locate(name, where):
    assert locate(name) == where


LLAMA = {"model_type": "llama"}


def test_bare_model_matches_a_model_with_its_head():
    bare = ["embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.1.self_attn.q_proj.weight", "norm.weight"]
    head = ["model." + n for n in bare] + ["lm_head.weight"]
    for base, tuned, side in ((bare, head, "tuned"), (head, bare, "base")):
        m = match_names(base, tuned, LLAMA, LLAMA)
        assert m.prefix == {"side": side, "prefix": "model."}
        assert sorted(m.common) == sorted("model." + n for n in bare)  # reported with the prefix
        assert m.common["model.norm.weight"] == (("norm.weight", "model.norm.weight") if side == "tuned"
                                                 else ("model.norm.weight", "norm.weight"))
        assert (m.only_tuned if side == "tuned" else m.only_base) == ["lm_head.weight"]


def test_equal_names_take_no_prefix():
    names = ["model.layers.0.a.weight", "model.layers.1.a.weight", "model.norm.weight"]
    m = match_names(names, names, LLAMA, LLAMA)
    assert m.prefix is None and sorted(m.common) == sorted(names) and not m.only_base and not m.only_tuned


def test_tied_head_follows_the_config_default_of_its_class():
    # GPT-2's config class ties by default, so a config.json without the key still ties.
    assert ties_embeddings({"model_type": "gpt2"}) is True
    assert ties_embeddings({"model_type": "llama"}) is False
    assert ties_embeddings({"model_type": "llama", "tie_word_embeddings": True}) is True
    assert ties_embeddings({"model_type": "llava", "text_config": {"model_type": "gemma", "tie_word_embeddings": True}})
    assert ties_embeddings(None) is False
    names = ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"]
    m = match_names(names + ["lm_head.weight"], names, {"model_type": "gpt2"}, {"model_type": "gpt2"})
    assert m.tied == ["lm_head.weight"] and not m.only_base
    # An untied head on one side only is reported as such, not hidden.
    m = match_names(names + ["lm_head.weight"], names, LLAMA, LLAMA)
    assert m.tied == [] and m.only_base == ["lm_head.weight"]


def test_a_tied_head_present_on_both_sides_is_counted_once():
    names = ["model.embed_tokens.weight", "model.layers.0.a.weight", "lm_head.weight"]
    m = match_names(names, names, {"model_type": "gemma2"}, {"model_type": "gemma2"})
    assert m.tied == ["lm_head.weight"] and "lm_head.weight" not in m.common


def test_t5_stacks_share_one_embedding():
    names = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
             "encoder.block.0.layer.0.SelfAttention.q.weight", "lm_head.weight"]
    untied = {"model_type": "t5", "tie_word_embeddings": False}  # T5 v1.1: the head is its own
    m = match_names(names, names, untied, untied)
    assert m.tied == ["decoder.embed_tokens.weight", "encoder.embed_tokens.weight"]
    assert "lm_head.weight" in m.common


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_analysis_of_a_bare_base_reads_each_side_by_its_own_name(tmp_path, monkeypatch, backend):
    from reference import tensor_stats
    from test_kernel_reference import _run, realistic_pair

    from worker.engine import analysis as analysis_module

    monkeypatch.setattr(analysis_module, "PIECE_ELEMENTS", 300)
    bare = {"embed_tokens.weight": (40, 8), "layers.0.self_attn.q_proj.weight": (24, 16),
            "layers.1.mlp.down_proj.weight": (8, 24), "norm.weight": (8,)}
    pairs = {n: realistic_pair(shape, torch.bfloat16, seed=i) for i, (n, shape) in enumerate(bare.items())}
    base = {n: p[0] for n, p in pairs.items()}
    tuned = {"model." + n: p[1] for n, p in pairs.items()}
    tuned["lm_head.weight"] = torch.zeros(40, 8, dtype=torch.bfloat16)
    result = _run(tmp_path, base, tuned, backend=backend)
    recs = {r["name"]: r for r in result["tensors"]}
    assert sorted(recs) == sorted("model." + n for n in bare)
    assert result["unmatched"]["prefix"] == {"side": "tuned", "prefix": "model."}
    assert result["unmatched"]["only_tuned"] == ["lm_head.weight"]
    assert any("prefix 'model.'" in w for w in result["warnings"])
    for n, (b, u) in pairs.items():
        ref = tensor_stats(b, u, [1e-5], 1e-5)
        assert recs["model." + n]["changed"]["1e-05"] == ref["changed"]["1e-05"]
    assert recs["model.layers.1.mlp.down_proj.weight"]["stack"] == "model.layers"
    assert recs["model.layers.1.mlp.down_proj.weight"]["module"] == "mlp.down_proj"
