"""A corpus of tiny but real checkpoint pairs, written exactly as transformers and PEFT save them.

What is in it
-------------
Each entry is a base checkpoint and a finetune of it, built with the real transformers
`*Config` + `*For...` classes (hidden 16-32, 2 layers, vocabulary 128, 4 heads) and saved with
`save_pretrained` (safetensors; some sharded with max_shard_size="20KB", so the index is used):

    llama3        LlamaForCausalLM, llama3 rope scaling, untied head; both sides sharded
    llama3_bare   the same base saved as the bare LlamaModel (`layers.0...`, no lm_head)
                  against the LlamaForCausalLM finetune (`model.layers.0...`, lm_head only in tuned)
    llama3_lora   LoRA on q_proj, v_proj, down_proj (r=4); tuned side = PEFT's merge_and_unload()
                  output; the adapter directory is `adapter_dir`
    mistral       MistralForCausalLM; base sharded, finetune a single file
    qwen2_5       Qwen2ForCausalLM (qkv biases, tied embeddings like Qwen2.5-0.5B)
    qwen3         Qwen3ForCausalLM (q_norm / k_norm)
    gemma2        Gemma2ForCausalLM (tied, four norms per block)
    gemma3        Gemma3ForCausalLM with Gemma3TextConfig
    phi3          Phi3ForCausalLM (fused qkv_proj and gate_up_proj)
    gpt2          GPT2LMHeadModel (Conv1D weights stored in x out, tied head)
    gpt2_bare     bare GPT2Model base (`h.0...`, `wte`) against the GPT2LMHeadModel finetune
    gpt2_lora     LoRA on the Conv1D c_attn (fan_in_fan_out=True, use_rslora=True)
    gpt_neox      GPTNeoXForCausalLM, Pythia style (fused query_key_value, untied embed_out)
    olmo2         Olmo2ForCausalLM
    mixtral       MixtralForCausalLM, 4 experts (block_sparse_moe.experts.N.w1/w2/w3); sharded
    qwen2_moe     Qwen2MoeForCausalLM, 4 experts plus a shared expert
    bert          BertForMaskedLM (tied decoder), trained on masked-LM labels
    t5            T5ForConditionalGeneration (encoder + decoder stacks), seq2seq labels
    llava         LlavaForConditionalGeneration (tiny CLIP vision tower + tiny Llama), trained on
                  image + text batches; saved as transformers 5 writes it by default (the original
                  layout: `vision_tower.encoder.layers`, `language_model.model.layers`); sharded
    llava_v5      the same pair saved with save_original_format=False (`model.vision_tower...`,
                  `model.language_model.layers`, `lm_head`)

Finetune: fp32 master weights, AdamW (lr 1e-4..1e-3, 2-4 steps) on random tokens with the model's
own loss; base and finetune are both the fp32 master cast to bf16 at save, as mixed-precision
trainers keep a bf16 copy. In Llava the last vision layer and the vision post-norm get no gradient
(vision_feature_layer=-2), so they are saved unchanged, as in real Llava finetunes.

Seeds: entry k of ENTRY_ORDER uses torch.manual_seed(SEED + k) for its initial weights, dropout
and batches; the build runs on one torch thread, so the bytes written are the same on every run.

Time: 2-5 s on 2 cores for all 20 entries, after the imports (transformers + peft, ~6 s).

    python -m tests.corpus.build DIR              # writes the corpus, prints the entries
    python -m tests.corpus.build DIR --analyze    # also runs the engine and prints sparsity
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

SEED = 20250807
VOCAB = 128
SHARD = "20KB"
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, **_TOKENS)


@dataclass(frozen=True)
class Entry:
    """One checkpoint pair. Names below are as the engine reports them (with a one-sided prefix)."""

    name: str
    arch: str  # the finetune's model class, e.g. "LlamaForCausalLM"
    base_dir: Path
    tuned_dir: Path  # for LoRA entries: the merged model PEFT writes
    stacks: frozenset[str]  # the layer stacks the engine must find
    layers: int = 2  # blocks per stack
    modules: tuple[tuple[str | None, str], ...] = ()  # (stack, module) pairs that must be reported
    experts: int | None = None  # experts per MoE layer
    prefix: str | None = None  # a prefix only the tuned side's names carry ("model.", "transformer.")
    only_base: tuple[str, ...] = ()  # documented unmatched names (as reported)
    only_tuned: tuple[str, ...] = ()
    sharded: tuple[bool, bool] = (False, False)  # (base, tuned) saved with an index
    layout: str = "plain"  # plain | bare_base | sharded_base | lora | original_format | v5_format
    adapter_dir: Path | None = None  # PEFT LoRA adapter whose merge is tuned_dir
    adapter: dict = field(default_factory=dict)  # the LoraConfig fields used


ENTRY_ORDER = ("llama3", "llama3_bare", "llama3_lora", "mistral", "qwen2_5", "qwen3", "gemma2", "gemma3",
               "phi3", "gpt2", "gpt2_bare", "gpt2_lora", "gpt_neox", "olmo2", "mixtral", "qwen2_moe",
               "bert", "t5", "llava", "llava_v5")

_LLAMA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


def _in(stack: str, *modules: str) -> tuple[tuple[str, str], ...]:
    return tuple((stack, m) for m in modules)


def _out(*modules: str) -> tuple[tuple[None, str], ...]:
    return tuple((None, m) for m in modules)


# --- batches: the model's own loss on random tokens ------------------------------------------------

def _causal_batch(batch: int = 4, length: int = 16) -> dict:
    ids = torch.randint(3, VOCAB, (batch, length))
    return {"input_ids": ids, "labels": ids}


def _mlm_batch(batch: int = 4, length: int = 16, mask_id: int = 3) -> dict:
    ids = torch.randint(4, VOCAB, (batch, length))
    masked = torch.rand(batch, length) < 0.15
    masked[:, 1] = True  # at least one label per row
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    return {"input_ids": torch.where(masked, torch.full_like(ids, mask_id), ids), "labels": labels}


def _seq2seq_batch(batch: int = 4, length: int = 12) -> dict:
    return {"input_ids": torch.randint(3, VOCAB, (batch, length)), "labels": torch.randint(3, VOCAB, (batch, length // 2))}


_IMAGE_TOKEN = VOCAB - 1
_IMAGE_SEQ = 4  # (image_size / patch_size)^2 = (32 / 16)^2 patches, CLS dropped ("default" strategy)


def _llava_batch(batch: int = 2, length: int = 16) -> dict:
    ids = torch.randint(3, VOCAB - 1, (batch, length))
    ids[:, 1:1 + _IMAGE_SEQ] = _IMAGE_TOKEN
    labels = torch.where(ids == _IMAGE_TOKEN, torch.full_like(ids, -100), ids)
    return {"input_ids": ids, "pixel_values": torch.randn(batch, 3, 32, 32), "labels": labels}


def _llava_text_batch() -> dict:
    ids = torch.randint(3, VOCAB - 1, (4, 16))
    return {"input_ids": ids, "labels": ids}


# --- models ------------------------------------------------------------------------------------------

def _models() -> dict[str, tuple[Callable, Callable]]:
    """name -> (build the fp32 model, make one training batch)."""
    import transformers as T

    def llava():
        vision = T.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=16, projection_dim=16)
        text = T.LlamaConfig(**_DECODER)
        return T.LlavaForConditionalGeneration(T.LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=_IMAGE_TOKEN, image_seq_length=_IMAGE_SEQ,
            projector_hidden_act="gelu"))

    llama3_rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 32}
    decoder = {k: v for k, v in _DECODER.items() if k != "max_position_embeddings"}
    return {
        "llama3": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder, max_position_embeddings=256, rope_theta=500000.0,
                                                            rope_scaling=llama3_rope, tie_word_embeddings=False)),
                   _causal_batch),
        "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(**_DECODER, sliding_window=32)), _causal_batch),
        "qwen2_5": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**_DECODER, tie_word_embeddings=True)), _causal_batch),
        "qwen3": (lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**_DECODER, head_dim=8)), _causal_batch),
        "gemma2": (lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**_DECODER, head_dim=8, attn_implementation="eager")),
                   _causal_batch),
        "gemma3": (lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**_DECODER, head_dim=8, attn_implementation="eager")),
                   _causal_batch),
        "phi3": (lambda: T.Phi3ForCausalLM(T.Phi3Config(**_DECODER)), _causal_batch),
        "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                                        bos_token_id=1, eos_token_id=2)), _causal_batch),
        "gpt_neox": (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
            max_position_embeddings=64, **_TOKENS)), _causal_batch),
        "olmo2": (lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**_DECODER)), _causal_batch),
        "mixtral": (lambda: T.MixtralForCausalLM(T.MixtralConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2)),
                    _causal_batch),
        "qwen2_moe": (lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
            **_DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32)), _causal_batch),
        "bert": (lambda: T.BertForMaskedLM(T.BertConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
            max_position_embeddings=64, pad_token_id=0)), _mlm_batch),
        "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(
            d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=VOCAB, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0)), _seq2seq_batch),
        "llava": (llava, _llava_batch),
    }


# (lr, steps) per trained family: different learning rates give different sparsities, as real runs do.
_TRAINING = {"llama3": (3e-4, 3), "mistral": (1e-4, 2), "qwen2_5": (2e-4, 3), "qwen3": (1e-3, 2), "gemma2": (1e-4, 4),
             "gemma3": (3e-4, 2), "phi3": (5e-4, 3), "gpt2": (2e-4, 3), "gpt_neox": (1e-4, 3), "olmo2": (1e-3, 3),
             "mixtral": (3e-4, 3), "qwen2_moe": (2e-4, 2), "bert": (5e-4, 3), "t5": (1e-4, 4), "llava": (3e-4, 3)}


def _train(model, batches: Iterable[dict], lr: float) -> None:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _save_bf16(model, directory: Path, *, sharded: bool = False, **kwargs) -> Path:
    """The fp32 master cast to bf16, saved the way transformers saves it."""
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(directory, max_shard_size=SHARD if sharded else "50GB",
                                                             **kwargs)
    return directory


@contextmanager
def _quiet_and_single_threaded():
    import transformers

    threads = torch.get_num_threads()
    verbosity = transformers.logging.get_verbosity()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a transformers name deprecated for v6
            yield
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def _lora(base_fp32, base_dir: Path, root: Path, name: str, cls, make_batch, lora: dict) -> tuple[Path, Path]:
    """Train a LoRA adapter a few steps (B starts at zero), save it, and save PEFT's merge into the bf16 base."""
    from peft import LoraConfig, PeftModel, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(base_fp32), LoraConfig(**lora))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(3):
        peft_model(**make_batch()).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    adapter_dir = root / f"{name}_adapter"
    peft_model.save_pretrained(adapter_dir)
    base = cls.from_pretrained(base_dir, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged_dir = root / f"{name}_merged"
    merged.save_pretrained(merged_dir)
    return adapter_dir, merged_dir


def build_corpus(root: Path, only: Iterable[str] | None = None) -> dict[str, Entry]:
    """Write the corpus under `root` (created); return its entries by name, in ENTRY_ORDER.

    `only` builds a subset (variants pull in the family they derive from)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = set(ENTRY_ORDER if only is None else only)
    unknown = wanted - set(ENTRY_ORDER)
    if unknown:
        raise ValueError(f"unknown corpus entries: {sorted(unknown)}")
    families = {n.split("_bare")[0].split("_lora")[0].removesuffix("_v5") for n in wanted}
    with _quiet_and_single_threaded():
        entries = _build(root, families)
    return {n: entries[n] for n in ENTRY_ORDER if n in wanted}


def _build(root: Path, families: set[str]) -> dict[str, Entry]:
    models = _models()
    entries: dict[str, Entry] = {}
    for family in (f for f in _TRAINING if f in families):
        torch.manual_seed(SEED + ENTRY_ORDER.index(family))
        build, make_batch = models[family]
        model = build()
        master0 = copy.deepcopy(model) if family in ("llama3", "gpt2") else None  # the fp32 base, for LoRA
        base_sharded, tuned_sharded = {"llama3": (True, True), "mistral": (True, False), "mixtral": (True, True),
                                       "llava": (True, True)}.get(family, (False, False))
        base_dir = _save_bf16(model, root / f"{family}_base", sharded=base_sharded)
        lr, steps = _TRAINING[family]
        if family == "llava":  # image+text steps (vision tower, projector, LM) and one text-only step
            batches = [_llava_batch() for _ in range(steps - 1)] + [_llava_text_batch()]
        else:
            batches = [make_batch() for _ in range(steps)]
        _train(model, batches, lr)
        tuned_dir = _save_bf16(model, root / f"{family}_tuned", sharded=tuned_sharded)
        arch = type(model).__name__
        common = dict(arch=arch, base_dir=base_dir, tuned_dir=tuned_dir, sharded=(base_sharded, tuned_sharded))
        layout = "sharded_base" if (base_sharded and not tuned_sharded) else "plain"

        if family in ("llama3", "mistral", "qwen2_5", "qwen3", "gemma2", "gemma3", "olmo2"):
            outside = ("model.embed_tokens", "model.norm") + (("lm_head",) if family in ("llama3", "mistral", "qwen3", "olmo2") else ())
            extra = {"qwen3": ("self_attn.q_norm", "self_attn.k_norm"), "olmo2": ("self_attn.q_norm", "post_feedforward_layernorm"),
                     "gemma2": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
                     "gemma3": ("self_attn.q_norm", "pre_feedforward_layernorm")}.get(family, ())
            mods = _in("model.layers", *[m for m in _LLAMA_MODULES if not (family == "olmo2" and m == "input_layernorm")],
                       *extra) + _out(*outside)
            entries[family] = Entry(family, stacks=frozenset({"model.layers"}), modules=mods, layout=layout, **common)
        elif family == "phi3":
            entries[family] = Entry(family, stacks=frozenset({"model.layers"}), modules=_in(
                "model.layers", "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
                + _out("model.embed_tokens", "model.norm", "lm_head"), **common)
        elif family == "gpt2":
            mods = _in("transformer.h", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "ln_1", "ln_2") + _out(
                "transformer.wte", "transformer.wpe", "transformer.ln_f")
            entries[family] = Entry(family, stacks=frozenset({"transformer.h"}), modules=mods, **common)
        elif family == "gpt_neox":
            entries[family] = Entry(family, stacks=frozenset({"gpt_neox.layers"}), modules=_in(
                "gpt_neox.layers", "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                "mlp.dense_4h_to_h", "input_layernorm") + _out("gpt_neox.embed_in", "embed_out", "gpt_neox.final_layer_norm"),
                **common)
        elif family == "mixtral":
            entries[family] = Entry(family, stacks=frozenset({"model.layers"}), experts=4, modules=_in(
                "model.layers", "block_sparse_moe.experts.*.w1", "block_sparse_moe.experts.*.w2",
                "block_sparse_moe.experts.*.w3", "block_sparse_moe.gate", "self_attn.q_proj") + _out("lm_head"), **common)
        elif family == "qwen2_moe":
            entries[family] = Entry(family, stacks=frozenset({"model.layers"}), experts=4, modules=_in(
                "model.layers", "mlp.experts.*.gate_proj", "mlp.experts.*.up_proj", "mlp.experts.*.down_proj", "mlp.gate",
                "mlp.shared_expert.gate_proj", "mlp.shared_expert_gate") + _out("lm_head"), **common)
        elif family == "bert":
            entries[family] = Entry(family, stacks=frozenset({"bert.encoder.layer"}), modules=_in(
                "bert.encoder.layer", "attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
                "output.LayerNorm") + _out("bert.embeddings.word_embeddings", "bert.embeddings.LayerNorm",
                                           "cls.predictions", "cls.predictions.transform.dense"), **common)
        elif family == "t5":
            t5_common = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v",
                         "layer.0.SelfAttention.o", "layer.0.SelfAttention.relative_attention_bias", "layer.0.layer_norm")
            entries[family] = Entry(family, stacks=frozenset({"encoder.block", "decoder.block"}), modules=_in(
                "encoder.block", *t5_common, "layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wo") + _in(
                "decoder.block", *t5_common, "layer.1.EncDecAttention.q", "layer.2.DenseReluDense.wo") + _out(
                "shared", "encoder.final_layer_norm", "decoder.final_layer_norm"), **common)
        elif family == "llava":
            entries["llava"] = Entry("llava", stacks=frozenset({"vision_tower.encoder.layers", "language_model.model.layers"}),
                                     modules=_in("vision_tower.encoder.layers", "self_attn.q_proj", "mlp.fc1", "layer_norm1")
                                     + _in("language_model.model.layers", *_LLAMA_MODULES) + _out(
                                         "multi_modal_projector.linear_1", "multi_modal_projector.linear_2",
                                         "vision_tower.embeddings.patch_embedding", "vision_tower.embeddings.class_embedding",
                                         "language_model.model.embed_tokens", "language_model.lm_head"),
                                     layout="original_format", **common)
            v5 = dict(common, base_dir=_save_bf16_from(base_dir, root / "llava_v5_base"),
                      tuned_dir=_save_bf16(model, root / "llava_v5_tuned", save_original_format=False), sharded=(False, False))
            entries["llava_v5"] = Entry("llava_v5", stacks=frozenset({"model.vision_tower.encoder.layers", "model.language_model.layers"}),
                                        modules=_in("model.vision_tower.encoder.layers", "self_attn.q_proj", "mlp.fc1")
                                        + _in("model.language_model.layers", *_LLAMA_MODULES) + _out(
                                            "model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2",
                                            "model.language_model.embed_tokens", "lm_head"),
                                        layout="v5_format", **v5)

        if family == "llama3":
            bare_dir = root / "llama3_bare_base"
            _bare_from(base_dir, bare_dir, "model")
            entries["llama3_bare"] = Entry("llama3_bare", arch=arch, base_dir=bare_dir, tuned_dir=tuned_dir,
                                           stacks=entries["llama3"].stacks,
                                           modules=tuple(m for m in entries["llama3"].modules if m != (None, "lm_head")),
                                           prefix="model.", only_tuned=("lm_head.weight",), sharded=(False, True),
                                           layout="bare_base")
            lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
            adapter_dir, merged_dir = _lora(master0, base_dir, root, "llama3_lora", type(model), _causal_batch, lora)
            entries["llama3_lora"] = Entry("llama3_lora", arch=arch, base_dir=base_dir, tuned_dir=merged_dir,
                                           stacks=entries["llama3"].stacks, modules=entries["llama3"].modules,
                                           sharded=(True, False), layout="lora", adapter_dir=adapter_dir, adapter=lora)
        if family == "gpt2":
            bare_dir = root / "gpt2_bare_base"
            _bare_from(base_dir, bare_dir, "transformer")
            entries["gpt2_bare"] = Entry("gpt2_bare", arch=arch, base_dir=bare_dir, tuned_dir=tuned_dir,
                                         stacks=entries["gpt2"].stacks, modules=entries["gpt2"].modules,
                                         prefix="transformer.", layout="bare_base")
            lora = dict(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, use_rslora=True, lora_dropout=0.0)
            adapter_dir, merged_dir = _lora(master0, base_dir, root, "gpt2_lora", type(model), _causal_batch, lora)
            entries["gpt2_lora"] = Entry("gpt2_lora", arch=arch, base_dir=base_dir, tuned_dir=merged_dir,
                                         stacks=entries["gpt2"].stacks, modules=entries["gpt2"].modules,
                                         layout="lora", adapter_dir=adapter_dir, adapter=lora)
    return entries


def _bare_from(headed_dir: Path, bare_dir: Path, attribute: str) -> None:
    """Save the bare backbone (LlamaModel, GPT2Model) of a saved bf16 checkpoint, as `Model.save_pretrained` does."""
    from transformers import AutoModelForCausalLM

    headed = AutoModelForCausalLM.from_pretrained(headed_dir, dtype=torch.bfloat16)
    getattr(headed, attribute).save_pretrained(bare_dir)


def _save_bf16_from(saved_dir: Path, directory: Path) -> Path:
    """Re-save a saved bf16 Llava checkpoint with transformers 5 names (bit-identical weights)."""
    from transformers import LlavaForConditionalGeneration

    LlavaForConditionalGeneration.from_pretrained(saved_dir, dtype=torch.bfloat16).save_pretrained(
        directory, save_original_format=False)
    return directory


def tensor_names(directory: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in the safetensors files of a checkpoint or adapter directory."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                out[k] = tuple(s.get_slice(k).get_shape())
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.corpus.build", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--only", nargs="*", help="entries to build (default: all)")
    parser.add_argument("--analyze", action="store_true", help="run the engine on every pair and print sparsity")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    entries = build_corpus(args.dir, args.only)
    print(f"built {len(entries)} entries in {time.perf_counter() - started:.1f} s under {args.dir}")
    for e in entries.values():
        base, tuned = tensor_names(e.base_dir), tensor_names(e.tuned_dir)
        print(f"  {e.name:12s} {e.arch:32s} base {len(base):3d} tensors, tuned {len(tuned):3d} tensors  [{e.layout}]")
    if args.analyze:
        from worker.engine import AnalysisOptions, analyze, open_source, parse_source

        print(f"{'entry':12s} {'tensors':>7s} {'numel':>7s} {'sparsity@1e-5':>14s} {'sparsity@0':>11s}")
        for e in entries.values():
            with open_source(parse_source(str(e.base_dir), allow_any_path=True)) as b, \
                    open_source(parse_source(str(e.tuned_dir), allow_any_path=True)) as u:
                try:
                    s = analyze(b, u, AnalysisOptions(tolerance=1e-5))["summary"]
                except Exception as exc:  # noqa: BLE001 - a report, not a test
                    print(f"{e.name:12s} {type(exc).__name__}: {exc}")
                    continue
            print(f"{e.name:12s} {s['tensors']:7d} {s['numel']:7d} {100 * s['sparsity']['1e-05']:13.2f}% "
                  f"{100 * s['sparsity']['0.0']:10.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
