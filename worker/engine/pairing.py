"""Which tensors of two checkpoints are compared, and how (metrics.md, "Pairing tensors")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from worker.engine.errors import EngineError
from worker.engine.safetensors_format import TensorInfo
from worker.engine.sources import Source

TIED_NAMES = ("lm_head.weight", "embed_out.weight")


@dataclass(frozen=True)
class Pair:
    name: str
    base: TensorInfo
    tuned: TensorInfo
    shape: tuple[int, ...]  # compared shape: the common leading rows when resized
    compare_dtype: torch.dtype
    added: int  # elements of extra rows in the larger side, not compared

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Pairing:
    pairs: list[Pair] = field(default_factory=list)
    unmatched: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _narrower(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    size = lambda d: torch.empty(0, dtype=d).element_size()  # noqa: E731
    return a if size(a) < size(b) else b


def _ties(source: Source) -> bool:
    config = source.config or {}
    text = config.get("text_config") or {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def pair_tensors(base: Source, tuned: Source) -> Pairing:
    out = Pairing()
    only_base = sorted(set(base.tensors) - set(tuned.tensors))
    only_tuned = sorted(set(tuned.tensors) - set(base.tensors))
    tied = [n for n in only_base + only_tuned if n.endswith(TIED_NAMES) and (_ties(base) or _ties(tuned))]
    unmatched = {
        "only_base": [n for n in only_base if n not in tied],
        "only_tuned": [n for n in only_tuned if n not in tied],
        "shape_mismatch": [],
        "resized": [],
        "dtype_mismatch": [],
        "unsupported": [],
        "tied": tied,
    }
    # Sequential reads of the base's files, in file order.
    common = sorted(set(base.tensors) & set(tuned.tensors), key=lambda n: (base.tensors[n].file, base.tensors[n].offset))
    for name in common:
        b, t = base.tensors[name], tuned.tensors[name]
        if b.torch_dtype is None or t.torch_dtype is None or not (b.torch_dtype.is_floating_point and t.torch_dtype.is_floating_point):
            unmatched["unsupported"].append({"name": name, "base_dtype": b.dtype, "tuned_dtype": t.dtype})
            continue
        shape, added = b.shape, 0
        if b.shape != t.shape:
            if len(b.shape) == len(t.shape) >= 1 and b.shape[1:] == t.shape[1:]:
                rows = min(b.shape[0], t.shape[0])
                shape = (rows, *b.shape[1:])
                added = abs(b.numel - t.numel)
                unmatched["resized"].append(
                    {"name": name, "base_shape": list(b.shape), "tuned_shape": list(t.shape), "added": added}
                )
            else:
                unmatched["shape_mismatch"].append({"name": name, "base_shape": list(b.shape), "tuned_shape": list(t.shape)})
                continue
        compare = b.torch_dtype
        if b.torch_dtype != t.torch_dtype:
            compare = _narrower(b.torch_dtype, t.torch_dtype)
            unmatched["dtype_mismatch"].append({"name": name, "base_dtype": b.dtype, "tuned_dtype": t.dtype})
        out.pairs.append(Pair(name, b, t, tuple(shape), compare, added))
    out.unmatched = unmatched
    out.warnings = _warnings(unmatched)
    return out


def _warnings(u: dict) -> list[str]:
    w = []
    if u["only_base"]:
        w.append(f"{len(u['only_base'])} tensors only in the base were not compared (e.g. {u['only_base'][0]}).")
    if u["only_tuned"]:
        w.append(f"{len(u['only_tuned'])} tensors only in the finetuned model were not compared (e.g. {u['only_tuned'][0]}).")
    if u["shape_mismatch"]:
        w.append(f"{len(u['shape_mismatch'])} tensors have different shapes and were not compared (e.g. {u['shape_mismatch'][0]['name']}).")
    for r in u["resized"]:
        w.append(
            f"{r['name']} was resized from {r['base_shape']} to {r['tuned_shape']}: the common rows are compared, "
            f"{r['added']} elements of extra rows are reported as added."
        )
    if u["dtype_mismatch"]:
        d = u["dtype_mismatch"][0]
        w.append(
            f"{len(u['dtype_mismatch'])} tensors differ in dtype (e.g. {d['base_dtype']} vs {d['tuned_dtype']}): "
            "both sides were cast to the narrower dtype before comparing."
        )
    if u["unsupported"]:
        w.append(f"{len(u['unsupported'])} non-float tensors were skipped (e.g. {u['unsupported'][0]['name']}).")
    if u["tied"]:
        w.append(f"{', '.join(u['tied'])} is tied to the embeddings on one side and is not counted twice.")
    return w


def check_compatible(base: Source, tuned: Source) -> dict:
    """Refuse pairs of different architectures before any weight byte is read."""
    def arch(src: Source) -> tuple:
        c = src.config or {}
        return (c.get("model_type"), tuple(c.get("architectures") or ()))

    a, b = arch(base), arch(tuned)
    if base.config and tuned.config and a[0] and b[0] and a[0] != b[0]:
        raise EngineError(
            "arch_mismatch",
            f"The architectures do not match: base is {a[0]} ({', '.join(a[1]) or '?'}), finetuned is "
            f"{b[0]} ({', '.join(b[1]) or '?'}). Compare a finetune with its own base model.",
        )
    shared = set(base.tensors) & set(tuned.tensors)
    smaller = min(len(base.tensors), len(tuned.tensors))
    if smaller and len(shared) < 0.5 * smaller:
        raise EngineError(
            "arch_mismatch",
            f"The architectures do not match: the checkpoints share only {len(shared)} of {smaller} tensor names. "
            "Compare a finetune with its own base model.",
        )
    return {"base": {"model_type": a[0], "architectures": list(a[1])}, "tuned": {"model_type": b[0], "architectures": list(b[1])}}
