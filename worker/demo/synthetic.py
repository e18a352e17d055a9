"""A small offline checkpoint family that shows the study's contrast: dense SFT, sparse RL.

base, sft (nearly every weight moved), rl_a and rl_b (~15-20% moved, their changed
sets sharing a common core so they overlap far above chance), and resized (an RL
update whose vocabulary grew by 8 rows). These are changed by construction; the
*trained* family (trained_demo.py, `write_demo(..., trained=True)`) comes out of real
training runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LAYERS, HIDDEN, INTERMEDIATE, VOCAB, EXTRA_VOCAB = 4, 128, 344, 512, 8


def _config(vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def _base(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def w(*shape, scale=0.02):
        return (torch.randn(*shape, generator=gen) * scale).to(torch.bfloat16)

    state = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{m}.weight"] = w(HIDDEN, HIDDEN)
        state[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        state[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        state[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
        state[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        state[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    state["model.norm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    state["lm_head.weight"] = w(VOCAB, HIDDEN)
    return state


def _moved(w: torch.Tensor, where: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """Move the selected weights: most by a relative step of about `scale`, a third by one bf16 step."""
    x = w.float()
    step = x * (torch.randn(x.shape, generator=gen) * scale)
    moved = (x + step).to(torch.bfloat16)
    one_ulp = torch.nextafter(w, torch.full_like(w, 1.0))  # exactly one representable step up
    pick_ulp = torch.rand(x.shape, generator=gen) < 0.33
    new = torch.where(pick_ulp, one_ulp, moved)
    return torch.where(where, new, w)


def _update(base: dict, gen: torch.Generator, select, scale: float = 0.02) -> dict:
    return {name: _moved(w, select(name, w), gen, scale) for name, w in base.items()}


def write_checkpoint(directory: Path, state: dict, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def write_demo(directory: Path, *, trained: bool = False, quick: bool = False,
               progress=None) -> dict[str, Path]:
    """Write the family under `directory` (deterministic) and return name -> checkpoint dir.

    With `trained`, also train the trained family (worker/demo/trained.py: a small
    Llama pretrained on addition, then SFT and RL runs; about a minute on two cores, or
    seconds with `quick`) and add trained/base, trained/sft, trained/rl, trained/sft_run
    and trained/rl_run (folders of checkpoint-<step>/). `progress(fraction, stage)`
    follows that training.
    """
    directory = Path(directory)
    gen = torch.Generator().manual_seed(20250515)
    base = _base(gen)
    # A shared core of "RL-relevant" weights per tensor, plus run-specific extras.
    core = {n: torch.rand(w.shape, generator=gen) < 0.10 for n, w in base.items()}

    def rl(seed_extra: float):
        def select(name, w):
            return core[name] | (torch.rand(w.shape, generator=gen) < seed_extra)
        return select

    # SFT: nearly every weight, by steps large enough to survive bf16 rounding.
    sft = _update(base, gen, lambda name, w: torch.rand(w.shape, generator=gen) < 0.97, scale=0.1)
    rl_a = _update(base, gen, rl(0.08))
    rl_b = _update(base, gen, rl(0.06))
    resized = _update(base, gen, rl(0.07))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = (torch.randn(EXTRA_VOCAB, HIDDEN, generator=gen) * 0.02).to(torch.bfloat16)
        resized[name] = torch.cat([resized[name], extra])
    out = {}
    for name, state, vocab in (
        ("base", base, VOCAB), ("sft", sft, VOCAB), ("rl_a", rl_a, VOCAB), ("rl_b", rl_b, VOCAB),
        ("resized", resized, VOCAB + EXTRA_VOCAB),
    ):
        out[name] = write_checkpoint(directory / name, state, _config(vocab))
    if trained:
        from worker.demo.trained import write_trained_demo

        out.update(write_trained_demo(directory, quick=quick, progress=progress))
    return out
