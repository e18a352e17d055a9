"""Which tensors of two checkpoints are compared, and how (docs/METRICS.md, "Pairing tensors")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from worker.engine.checkpoints.safetensors_format import TensorInfo
from worker.engine.checkpoints.sources import Source
from worker.engine.errors import EngineError
from worker.engine.pairing.names import match_names


@dataclass(frozen=True)
class Pair:
    name: str
    base: TensorInfo
    tuned: TensorInfo
    shape: tuple[int, ...]  # compared shape: the common leading rows when resized
    compare_dtype: torch.dtype
    added: int  # elements of extra rows in the tuned tensor (vocabulary grown), not compared
    removed: int = 0  # elements of extra rows in the base tensor (vocabulary shrunk), not compared

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Pairing:
    pairs: list[Pair] = field(default_factory=list)
    unmatched: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# The dtypes compared (docs/METRICS.md); F64 and integer tensors are reported as unsupported.
SUPPORTED_DTYPES = ("BF16", "F16", "F32", "F8_E4M3", "F8_E5M2")


def _decoded(info: TensorInfo) -> bool:
    return bool(getattr(info, "decoded", False))


def _format(info: TensorInfo) -> str:
    """The stored dtype, or the quantized format of a dequantized tensor (e.g. "fp8 e4m3, 128x128 f32 scales")."""
    return info.label if _decoded(info) else info.dtype


def _supported(info: TensorInfo) -> bool:
    return _decoded(info) or info.dtype in SUPPORTED_DTYPES


def _narrower(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The dtype two different float dtypes are compared in.

    Different widths: the narrower one (the wider side is rounded to nearest even).
    Equal widths (bf16 vs fp16, e4m3 vs e5m2): float32, which holds both exactly, so
    the result does not depend on which side is which.
    """
    if a == b:
        return a
    if a.itemsize == b.itemsize:
        return torch.float32
    return a if a.itemsize < b.itemsize else b


def pair_tensors(base: Source, tuned: Source) -> Pairing:
    out = Pairing()
    names = match_names(base.tensors, tuned.tensors, base.config, tuned.config)
    unmatched = {
        "only_base": names.only_base,
        "only_tuned": names.only_tuned,
        "shape_mismatch": [],
        "resized": [],
        "dtype_mismatch": [],
        "unsupported": [],
        "tied": names.tied,
        "prefix": names.prefix,
    }
    # Sequential reads of the base's files, in file order.
    where = lambda n: (base.tensors[names.common[n][0]].file, base.tensors[names.common[n][0]].offset)  # noqa: E731
    common = sorted(names.common, key=where)
    for name in common:
        b, t = base.tensors[names.common[name][0]], tuned.tensors[names.common[name][1]]
        if not (_supported(b) and _supported(t)):
            unmatched["unsupported"].append({"name": name, "base_dtype": b.dtype, "tuned_dtype": t.dtype})
            continue
        shape, added, removed = b.shape, 0, 0
        if b.shape != t.shape:
            if len(b.shape) == len(t.shape) >= 1 and b.shape[1:] == t.shape[1:]:
                rows = min(b.shape[0], t.shape[0])
                shape = (rows, *b.shape[1:])
                added = max(t.numel - b.numel, 0)  # rows only the tuned tensor has
                removed = max(b.numel - t.numel, 0)  # rows the tuned tensor dropped
                unmatched["resized"].append(
                    {"name": name, "base_shape": list(b.shape), "tuned_shape": list(t.shape),
                     "added": added, "removed": removed}
                )
            else:
                unmatched["shape_mismatch"].append({"name": name, "base_shape": list(b.shape), "tuned_shape": list(t.shape)})
                continue
        compare = b.torch_dtype
        if _decoded(b) or _decoded(t):
            # Dequantized weights (fp8 blocks, MXFP4) are compared on their values, exactly in float64.
            compare = torch.float64
            if _format(b) != _format(t):
                unmatched["dtype_mismatch"].append({"name": name, "base_dtype": _format(b), "tuned_dtype": _format(t),
                                                    "compare_dtype": "float64"})
        elif b.torch_dtype != t.torch_dtype:
            compare = _narrower(b.torch_dtype, t.torch_dtype)
            unmatched["dtype_mismatch"].append({"name": name, "base_dtype": b.dtype, "tuned_dtype": t.dtype,
                                                "compare_dtype": str(compare).removeprefix("torch.")})
        out.pairs.append(Pair(name, b, t, tuple(shape), compare, added, removed))
    out.unmatched = unmatched
    out.warnings = _warnings(unmatched)
    return out


# Prefixes that training wrappers add to every name, and what they are.
WRAPPER_PREFIXES = {
    "_orig_mod.": "the state dict of a torch.compile'd model, saved without unwrapping it",
    "module.": "the state dict of a DistributedDataParallel / DataParallel wrapper, saved without unwrapping it",
}


def _warnings(u: dict) -> list[str]:
    w = []
    if u["only_base"]:
        w.append(f"{len(u['only_base'])} tensors only in the base were not compared (e.g. {u['only_base'][0]}).")
    if u["only_tuned"]:
        w.append(f"{len(u['only_tuned'])} tensors only in the finetuned model were not compared (e.g. {u['only_tuned'][0]}).")
    if u["shape_mismatch"]:
        w.append(f"{len(u['shape_mismatch'])} tensors have different shapes and were not compared (e.g. {u['shape_mismatch'][0]['name']}).")
    for r in u["resized"]:
        extra = (f"{r['added']} elements of rows only the finetuned model has are reported as added"
                 if r.get("added") else
                 f"{r.get('removed', 0)} elements of base rows the finetuned model dropped are reported as removed")
        w.append(
            f"{r['name']} was resized from {r['base_shape']} to {r['tuned_shape']}: the common rows are compared, "
            f"{extra}."
        )
    # Only an equal-width pair is compared in float32 (against F32, the other side is narrower).
    same_width = [d for d in u["dtype_mismatch"] if d.get("compare_dtype") == "float32"]
    dequantized = [d for d in u["dtype_mismatch"] if d.get("compare_dtype") == "float64"]
    mismatched = [d for d in u["dtype_mismatch"] if d.get("compare_dtype") not in ("float32", "float64")]
    if dequantized:
        d = dequantized[0]
        w.append(
            f"{len(dequantized)} tensors are stored in different formats (e.g. {d['base_dtype']} vs {d['tuned_dtype']}): "
            "both sides were dequantized and compared on their values, exactly in float64."
        )
    if mismatched:
        d = mismatched[0]
        w.append(
            f"{len(mismatched)} tensors differ in dtype (e.g. {d['base_dtype']} vs {d['tuned_dtype']}): "
            "both sides were cast to the narrower dtype (round to nearest even) before comparing."
        )
    if same_width:
        d = same_width[0]
        w.append(
            f"{len(same_width)} tensors differ in dtype at equal width (e.g. {d['base_dtype']} vs {d['tuned_dtype']}): "
            "both sides were compared exactly in float32."
        )
    if u["unsupported"]:
        d = u["unsupported"][0]
        w.append(
            f"{len(u['unsupported'])} tensors have an unsupported dtype and were not compared "
            f"(e.g. {d['name']}: {d['base_dtype']} vs {d['tuned_dtype']}; supported: {', '.join(SUPPORTED_DTYPES)})."
        )
    if u["tied"]:
        w.append(f"{', '.join(u['tied'])} {'is' if len(u['tied']) == 1 else 'are'} tied to the embeddings "
                 "(per the config) and counted once.")
    if u.get("prefix"):
        p = u["prefix"]
        other = "finetuned model" if p["side"] == "base" else "base"
        why = WRAPPER_PREFIXES.get(p["prefix"], "a bare model against one saved with its head")
        w.append(f"The {'base' if p['side'] == 'base' else 'finetuned model'} names its tensors with the prefix "
                 f"'{p['prefix']}' and the {other} does not ({why}): names were matched without it.")
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
    shared = match_names(base.tensors, tuned.tensors, base.config, tuned.config).common
    smaller = min(len(base.tensors), len(tuned.tensors))
    if smaller and len(shared) < 0.5 * smaller:
        raise EngineError(
            "arch_mismatch",
            f"The architectures do not match: the checkpoints share only {len(shared)} of {smaller} tensor names. "
            "Compare a finetune with its own base model.",
        )
    return {"base": {"model_type": a[0], "architectures": list(a[1])}, "tuned": {"model_type": b[0], "architectures": list(b[1])}}
