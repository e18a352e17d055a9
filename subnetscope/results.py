"""Typed results of the notebook API: the numbers of the CLI's JSON, as attributes.

Each keeps the whole document in `.data` (the same dict `--json` writes, docs/CONTRACTS.md), so
nothing is lost; the attributes are the numbers people reach for first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _tolerances(block: dict) -> dict[float, Any]:
    return {float(k): v for k, v in (block or {}).items()}


@dataclass(frozen=True)
class TensorStat:
    name: str
    shape: tuple[int, ...]
    numel: int
    changed: int | None
    sparsity: float | None  # fraction, at the analysis tolerance
    stack: str | None
    layer: int | None
    module: str | None


@dataclass(frozen=True)
class AnalysisResult:
    base: str
    tuned: str
    tolerance: float
    numel: int
    sparsity: float                 # update sparsity at `tolerance` (fraction)
    bit_exact_sparsity: float       # at t = 0
    changed: dict[float, int]       # exact counts per tolerance
    sparsities: dict[float, float]  # the same as fractions
    rank_mean: float | None
    summary_text: str               # the plain summary (frontend/summary.py)
    masks: Path | None = None       # masks.safetensors, when masks were kept
    data: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict, masks: Path | None = None) -> AnalysisResult:
        from frontend.summary import plain_summary

        s = data["summary"]
        t = float(data["options"]["tolerance"])
        sparsities = _tolerances(s.get("sparsity"))
        from frontend.numbers import result_sparsity

        return cls(base=str(data["base"]["id"]), tuned=str(data["tuned"]["id"]), tolerance=t, numel=int(s["numel"]),
                   sparsity=result_sparsity(data, t)[0], bit_exact_sparsity=sparsities.get(0.0, float("nan")),
                   changed={k: int(v) for k, v in _tolerances(s.get("changed")).items()}, sparsities=sparsities,
                   rank_mean=(s.get("rank") or {}).get("mean"), summary_text=plain_summary(data), masks=masks,
                   data=data)

    def top_tensors(self, n: int = 10) -> list[TensorStat]:
        """The n most changed tensors at the analysis tolerance (the CLI's --top table)."""
        from frontend.summary import top_tensors

        shapes = {r["name"]: tuple(r.get("shape") or ()) for r in self.data.get("tensors") or []}
        return [TensorStat(r["name"], shapes.get(r["name"], ()), r["numel"], r["changed"],
                           None if r["sparsity"] is None else r["sparsity"] / 100, r["stack"], r["layer"], r["module"])
                for r in top_tensors(self.data, self.tolerance, n)]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.data, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text


@dataclass(frozen=True)
class OverlapResult:
    labels: list[str]
    tolerance: float
    numel: int
    o1: float | None
    o2: float | None
    jaccard: float | None
    random_o1: float | None
    random_o2: float | None
    summary_text: str
    data: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> OverlapResult:
        from frontend.summary import overlap_summary

        return cls(labels=list(data["labels"]), tolerance=float(data["tolerance"]), numel=int(data["numel"]),
                   o1=data.get("o1"), o2=data.get("o2"), jaccard=data.get("jaccard"), random_o1=data.get("random_o1"),
                   random_o2=data.get("random_o2"), summary_text=overlap_summary(data), data=data)


@dataclass(frozen=True)
class CheckpointStat:
    name: str
    step: int | None
    sparsity: float | None  # against the base, at the run's tolerance
    ever_density: float | None
    outside_share: float | None
    o1: float | None
    o2: float | None


@dataclass(frozen=True)
class DynamicsResult:
    run: str
    tolerance: float
    numel: int
    checkpoints: list[CheckpointStat]
    data: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> DynamicsResult:
        key = data.get("tolerance_key") or repr(float(data["tolerance"]))
        points = [CheckpointStat(c["name"], c.get("step"), (c.get("sparsity") or {}).get(key), c.get("ever_density"),
                                 c.get("outside_share"), c.get("o1"), c.get("o2")) for c in data["checkpoints"]]
        return cls(run=str((data.get("run") or {}).get("id")), tolerance=float(data["tolerance"]),
                   numel=int(data["numel"]), checkpoints=points, data=data)
