"""Which tensor of one checkpoint is which tensor of the other (docs/METRICS.md, "Pairing tensors").

Two things make equal tensors carry different names, or one tensor carry two:

* A one-sided prefix. A checkpoint saved from the bare model (`layers.0...`, GPT-2's
  `h.0...`) against one saved with its head (`model.layers.0...`, `transformer.h.0...`).
  Names are matched after dropping the prefix, and reported with it.
* Tied weights. `lm_head.weight` is the input embedding when the config ties them
  (transformers then saves it once, or twice with equal bytes); T5's
  `encoder/decoder.embed_tokens` are `shared`. A tied alias is never compared: its
  bytes are its target's, already counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Model types whose config class defaults `tie_word_embeddings` to True (transformers 5),
# for configs that omit the key because it equals that default.
TIED_BY_DEFAULT = frozenset({
    "gpt2", "gpt_neo", "gpt_bigcode", "opt", "bloom", "falcon", "codegen",
    "gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text",
    "bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "modernbert",
    "t5", "mt5", "umt5", "bart", "mbart", "pegasus", "whisper", "smollm3", "qwen2_vl",
})
# Model types whose config class defaults it to False; a type in neither set follows
# the old `PretrainedConfig` default, True.
UNTIED_BY_DEFAULT = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "phimoe", "phi",
    "gpt_neox", "gptj", "olmo", "olmo2", "olmo3", "olmoe", "deepseek_v2", "deepseek_v3", "granite",
    "granitemoe", "cohere", "cohere2", "starcoder2", "stablelm", "internlm2", "exaone", "jamba", "dbrx",
    "llava", "llava_next", "mllama", "idefics3", "qwen2_5_vl", "mistral3", "llama4", "ministral",
})

# Output heads that are the input embedding when the config ties them.
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight", "cls.predictions.decoder.weight")
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "shared.weight", "embed_in.weight")
# Aliases that are their target whatever the config says (T5 builds both stacks on `shared`).
ALWAYS_TIED = {
    "encoder.embed_tokens.weight": "shared.weight",
    "decoder.embed_tokens.weight": "shared.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def ties_embeddings(config: dict | None) -> bool:
    """`tie_word_embeddings` as transformers reads it: the key, else the class default."""
    if not config:
        return False
    for c in (config, config.get("text_config") or {}):
        if isinstance(c, dict) and isinstance(c.get("tie_word_embeddings"), bool):
            return c["tie_word_embeddings"]
    model_type = config.get("model_type")
    text_type = (config.get("text_config") or {}).get("model_type") if isinstance(config.get("text_config"), dict) else None
    for t in (model_type, text_type):
        if t in TIED_BY_DEFAULT:
            return True
        if t in UNTIED_BY_DEFAULT:
            return False
    return model_type is not None


@dataclass
class NameMatch:
    common: dict[str, tuple[str, str]] = field(default_factory=dict)  # reported name -> (base name, tuned name)
    only_base: list[str] = field(default_factory=list)
    only_tuned: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)  # reported names of aliases not compared
    prefix: dict | None = None  # {"side": "base"|"tuned", "prefix": "model."} when one was dropped


def _prefix_candidates(names: set[str]) -> list[str]:
    """Leading dotted paths (1-3 parts, no index) that a tenth or more of the names share."""
    counts: Counter = Counter()
    for n in names:
        parts = n.split(".")
        for k in range(1, min(4, len(parts))):
            if parts[k - 1].isdigit():
                break
            counts[".".join(parts[:k]) + "."] += 1
    return [p for p, c in counts.items() if c * 10 >= len(names)]


def _strip(names: set[str], prefix: str) -> dict[str, str]:
    """short name -> own name, for names carrying `prefix` (others keep their name)."""
    out = {n: n for n in names if not n.startswith(prefix)}
    out.update({n[len(prefix):]: n for n in names if n.startswith(prefix)})
    return out


def match_names(base_names, tuned_names, base_config: dict | None = None, tuned_config: dict | None = None) -> NameMatch:
    base, tuned = set(base_names), set(tuned_names)
    best = (len(base & tuned), None, None)
    # Only a prefix that pairs clearly more tensors than the names as they are is dropped.
    for side, own, other in (("base", base, tuned), ("tuned", tuned, base)):
        for prefix in _prefix_candidates(own):
            n = len(_strip(own, prefix).keys() & other)
            if n > best[0] and n > len(base & tuned) * 1.5:
                best = (n, side, prefix)
    out = NameMatch()
    _, side, prefix = best
    if side is None:
        b_short, t_short = {n: n for n in base}, {n: n for n in tuned}
    elif side == "base":
        b_short, t_short = _strip(base, prefix), {n: n for n in tuned}
        out.prefix = {"side": "base", "prefix": prefix}
    else:
        b_short, t_short = {n: n for n in base}, _strip(tuned, prefix)
        out.prefix = {"side": "tuned", "prefix": prefix}
    # Report every name as the prefixed side spells it.
    full = (lambda s: b_short[s]) if side == "base" else (lambda s: t_short[s])
    for short in b_short.keys() & t_short.keys():
        out.common[full(short)] = (b_short[short], t_short[short])
    out.only_base = sorted(b_short[s] for s in b_short.keys() - t_short.keys())
    out.only_tuned = sorted(t_short[s] for s in t_short.keys() - b_short.keys())
    _drop_tied(out, ties_embeddings(base_config) or ties_embeddings(tuned_config))
    return out


def _drop_tied(match: NameMatch, ties: bool) -> None:
    """Move tied aliases whose target is compared out of the comparison."""
    compared = set(match.common)

    def target_of(name: str) -> str | None:
        for alias, target in ALWAYS_TIED.items():
            if name.endswith(alias):
                stem = name[: len(name) - len(alias)]
                return stem + target if stem + target in compared else None
        if ties and name.endswith(HEAD_SUFFIXES):
            embeds = sorted(n for n in compared if n.endswith(EMBED_SUFFIXES) and n != name)
            # A multimodal model has one text embedding; prefer the one beside the head's prefix.
            return embeds[0] if embeds else None
        return None

    tied = []
    for bucket in (match.only_base, match.only_tuned):
        for name in [n for n in bucket if target_of(n)]:
            bucket.remove(name)
            tied.append(name)
    for name in [n for n in match.common if target_of(n)]:
        del match.common[name]
        tied.append(name)
    match.tied = sorted(set(tied))
