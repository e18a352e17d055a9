"""Layer index and module type from a tensor's name (Llama/Mistral/Qwen, GPT-2, BERT styles)."""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")

# Names outside the layer stack, by what they are; checked in order.
_OUTSIDE = (
    ("lm_head", "lm_head"),
    ("embed_out", "lm_head"),
    ("embed_tokens", "embed_tokens"),
    ("wte", "embed_tokens"),
    ("word_embeddings", "embed_tokens"),
    ("wpe", "embed_positions"),
    ("position_embeddings", "embed_positions"),
    ("token_type_embeddings", "embed_token_types"),
    ("embeddings.LayerNorm", "embed_norm"),
    ("norm", "final_norm"),
    ("ln_f", "final_norm"),
)

# Generic words that name a parameter rather than a module.
_PARAM_WORDS = {"weight", "bias", "scale", "weight_scale", "input_scale", "scales", "qweight", "g_idx"}


def layer_of(name: str) -> int | None:
    """Index of the transformer block a tensor belongs to, or None outside the stack."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_of(name: str) -> str:
    """Module type: the trailing module name (q_proj, dense, ...) or, outside layers, a role."""
    parts = name.split(".")
    while len(parts) > 1 and parts[-1] in _PARAM_WORDS:
        parts.pop()
    if layer_of(name) is None:
        for needle, role in _OUTSIDE:
            if needle in name:
                return role
        return parts[-1]
    tail = parts[-1]
    # BERT reuses "dense" and "LayerNorm" in several places; keep the parent for those.
    if tail in {"dense", "LayerNorm"} and len(parts) >= 2 and not parts[-2].isdigit():
        return f"{parts[-2]}.{tail}"
    return tail
