"""Where a tensor sits in a model, from its name alone (docs/METRICS.md, "Structure and magnitude").

A layer is keyed by (stack, N): the stack is the dotted path up to a numbered
container of blocks and N is the index that follows it. Only container words that
real checkpoints use for their block lists count, so a projector's `mlp.0` or a
T5 block's inner `layer.1` is not mistaken for a stack of its own:

    model.layers.3.self_attn.q_proj.weight               -> (model.layers, 3)  self_attn.q_proj
    bert.encoder.layer.2.attention.output.dense.weight   -> (bert.encoder.layer, 2)  attention.output.dense
    decoder.block.1.layer.2.DenseReluDense.wo.weight     -> (decoder.block, 1)  layer.2.DenseReluDense.wo
    model.layers.0.mlp.experts.7.down_proj.weight        -> (model.layers, 0)  mlp.experts.*.down_proj, expert 7
    model.vision_tower.vision_model.encoder.layers.0...  -> (model.vision_tower.vision_model.encoder.layers, 0)
    lm_head.weight                                       -> outside any stack, module lm_head

Encoder and decoder, vision tower and language model are different stacks, so they
never share a heatmap row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# Names of the lists that hold a model's repeated blocks (Llama/Mistral/Qwen/Gemma `layers`,
# BERT `layer`, GPT-2 `h`, T5 `block`, ViT/Qwen2-VL `blocks`, OpenAI CLIP `resblocks`).
STACK_WORDS = frozenset({"layers", "layer", "h", "blocks", "block", "resblocks"})
# Lists whose index names one expert of a mixture: folded into `*` in the module.
EXPERT_WORDS = frozenset({"experts", "local_experts"})
# Final name parts that say which parameter of a module a tensor is, not which module.
PARAM_WORDS = frozenset({
    "weight", "bias", "gamma", "beta", "scale",
    "weight_scale", "weight_scale_inv", "input_scale", "scales", "qweight", "qzeros", "g_idx",
})


@dataclass(frozen=True)
class Location:
    stack: str | None  # e.g. "model.layers"; None outside any stack
    layer: int | None  # the block index within the stack
    module: str  # path inside the block (or the full path outside), without the parameter word
    expert: int | None = None  # the folded expert index of a mixture-of-experts weight


@lru_cache(maxsize=1 << 16)
def locate(name: str) -> Location:
    parts = name.split(".")
    while len(parts) > 1 and parts[-1] in PARAM_WORDS:
        parts.pop()
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit() and parts[i - 1] in STACK_WORDS:
            inner, expert = _fold_experts(parts[i + 1:])
            return Location(".".join(parts[:i]), int(parts[i]), ".".join(inner), expert)
    return Location(None, None, ".".join(parts))


def _fold_experts(parts: list[str]) -> tuple[list[str], int | None]:
    out, expert = [], None
    for i, part in enumerate(parts):
        if part.isdigit() and i and parts[i - 1] in EXPERT_WORDS and expert is None:
            out.append("*")
            expert = int(part)
        else:
            out.append(part)
    return out, expert


def name_order(name: str) -> tuple:
    """Natural sort key of tensor names: layers.2 before layers.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def layer_order(row: dict) -> tuple:
    """Sort key of per-layer rows: by stack name, then index; tensors outside any stack last."""
    return (row.get("layer") is None, row.get("stack") or "", row.get("layer") or 0)


def layer_of(name: str) -> int | None:
    return locate(name).layer


def stack_of(name: str) -> str | None:
    return locate(name).stack


def module_of(name: str) -> str:
    return locate(name).module
