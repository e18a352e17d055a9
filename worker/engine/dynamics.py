"""Training dynamics of a run, reduced from its analyses (docs/METRICS.md, "Training dynamics").

Input, per checkpoint c_i of a run (i = 1..k, in step order), from ordinary analyses:
the result and the packed mask of (base, c_i) at tolerance t, and the result of the
consecutive update (c_{i-1}, c_i) with c_0 = the base (so the first consecutive update is
the (base, c_1) analysis itself). Output, per checkpoint and per layer (stack, N):

- sparsity_i at every exact tolerance, from the (base, c_i) result;
- consecutive sparsity at every exact tolerance, from the (c_{i-1}, c_i) result;
- at t, from the masks: I_i = changed set of (base, c_i); the ever-changed set
  E_i = I_1 | ... | I_i; |E_i \\ I_i| / |E_i|, the share of what was ever touched that is
  outside the subnetwork at step i (changed, then back within t of the base); and the overlap
  of I_i with the final set I_k: o1 = |I_i & I_k| / |I_i|, o2 = |I_i & I_k| / |I_k|, with the
  random baselines |I_k| / n and |I_i| / n.

The mask counts are popcounts over packed bytes, one tensor at a time: memory holds three
packed masks of one tensor (the running union, the final set, the current set), whatever
the number of checkpoints or the model size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.engine.errors import EngineError
from worker.engine.kernel.bins import EXACT_TOLERANCES
from worker.engine.masks import read_metadata
from worker.engine.overlap import _intersectable, _popcount, _warnings
from worker.engine.pairing.location import layer_order, locate
from worker.engine.tolerance import tolerance_key

SCHEMA = 1
COUNTS = ("subnet", "ever_changed", "ever_outside", "final_both")


@dataclass(frozen=True)
class RunPoint:
    """One checkpoint c_i of a run and what its analyses found."""

    name: str  # "checkpoint-500", "step-100"
    step: int | None
    masks: Path  # masks.safetensors of the (base, c_i) analysis
    result: Mapping  # the (base, c_i) result, schema 1 (summary and layers are read)
    consecutive: Mapping | None = None  # the (c_{i-1}, c_i) result; None: not computed
    analysis: str | None = None  # service ids, passed through
    consecutive_analysis: str | None = None


def slim(result: Mapping) -> dict:
    """What the reduce reads of a schema-1 result (callers may drop the rest to save memory)."""
    return {k: result.get(k) for k in ("base", "tuned", "options", "tolerances", "summary", "layers", "warnings")}


def _sparsities(numel: int, changed: Mapping[str, int]) -> dict[str, float | None]:
    return {k: (1.0 - c / numel) if numel else None for k, c in changed.items()}


def _exact(block: Mapping | None) -> dict | None:
    """numel, changed and sparsity at the exact tolerances (and any other the analysis counted)."""
    if not block:
        return None
    numel = int(block.get("numel") or 0)
    changed = {k: int(v) for k, v in (block.get("changed") or {}).items()}
    return {"numel": numel, "changed": changed, "sparsity": _sparsities(numel, changed)}


def _layer_blocks(result: Mapping | None) -> dict[tuple, dict]:
    return {(row.get("stack"), row.get("layer")): row for row in (result or {}).get("layers") or []}


class _Counts:
    """Mask counts of one group (the model, or one layer) at each checkpoint."""

    def __init__(self, k: int):
        self.numel = 0
        self.c = {name: [0] * k for name in COUNTS}

    def add(self, i: int, subnet: int, ever: int, outside: int, both: int) -> None:
        self.c["subnet"][i] += subnet
        self.c["ever_changed"][i] += ever
        self.c["ever_outside"][i] += outside
        self.c["final_both"][i] += both

    def at(self, i: int) -> dict:
        n, final = self.numel, self.c["subnet"][-1]
        subnet, ever, outside, both = (self.c[name][i] for name in COUNTS)
        return {
            "subnet": subnet, "ever_changed": ever, "ever_outside": outside, "final_both": both,
            "subnet_density": subnet / n if n else None,
            "ever_density": ever / n if n else None,
            "outside_share": outside / ever if ever else None,
            "o1": both / subnet if subnet else None,
            "o2": both / final if final else None,
            "random_o1": final / n if n else None,
            "random_o2": subnet / n if n else None,
        }


def _check(points: Sequence[RunPoint]) -> tuple[str, str, list[dict], list[dict[str, list[int]]]]:
    if len(points) < 1:
        raise EngineError("bad_request", "A run needs at least one checkpoint to reduce.")
    metas = []
    for p in points:
        if not Path(p.masks).is_file():
            raise EngineError("not_found", f"The mask file of checkpoint {p.name} is missing ({Path(p.masks).name}); "
                                           "run its analysis again to write it.")
        metas.append(read_metadata(Path(p.masks)))
    bases = {m.get("base_sha") for m, _ in metas}
    tolerances = {m.get("tolerance") for m, _ in metas}
    if len(bases) != 1:
        raise EngineError("incompatible", "The run's analyses have different bases (commits); a run compares every "
                                          "checkpoint with one base.")
    if len(tolerances) != 1:
        raise EngineError("incompatible", f"The run's analyses used different tolerances "
                                          f"({', '.join(sorted(map(str, tolerances)))}); a run uses one.")
    return bases.pop(), tolerances.pop(), [m for m, _ in metas], [s for _, s in metas]


def reduce_run(points: Sequence[RunPoint], *, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """The dynamics of a run (schema above and in docs/CONTRACTS.md) from its analyses."""
    from safetensors import safe_open

    base_sha, tol_key, _, shapes = _check(points)
    k = len(points)
    labels = [p.name for p in points]
    names, unmatched = _intersectable(labels, shapes)
    total, layers = _Counts(k), {}
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(safe_open(str(p.masks), framework="numpy")) for p in points]
        for done, name in enumerate(names):
            numel = int(np.prod(shapes[0][name]))
            where = locate(name)
            group = layers.setdefault((where.stack, where.layer), _Counts(k))
            total.numel += numel
            group.numel += numel
            final = files[-1].get_tensor(name)
            union = np.zeros_like(final)
            for i, f in enumerate(files):
                current = final if i == k - 1 else f.get_tensor(name)
                np.bitwise_or(union, current, out=union)
                counts = (_popcount(current), _popcount(union), _popcount(union & ~current),
                          _popcount(current & final))
                total.add(i, *counts)
                group.add(i, *counts)
            if on_progress is not None:
                on_progress(done + 1, len(names))

    tolerance = float(tol_key)
    tolerances = list(EXACT_TOLERANCES)
    checkpoints = []
    for i, p in enumerate(points):
        summary = _exact(p.result.get("summary"))
        consecutive = _exact((p.consecutive or {}).get("summary")) if p.consecutive is not None else None
        checkpoints.append({
            "name": p.name, "step": p.step,
            "tuned": p.result.get("tuned"),
            "analysis": p.analysis, "consecutive_analysis": p.consecutive_analysis,
            "consecutive_from": (p.consecutive or {}).get("base") if p.consecutive is not None else None,
            **(summary or {"numel": 0, "changed": {}, "sparsity": {}}),
            "consecutive": consecutive,
            **total.at(i),
        })

    per_layer_results = [_layer_blocks(p.result) for p in points]
    per_layer_consecutive = [_layer_blocks(p.consecutive) if p.consecutive is not None else None for p in points]
    layer_rows = []
    keys = set(layers)
    for blocks in per_layer_results:
        keys |= set(blocks)
    for key in keys:
        group = layers.get(key)
        steps = []
        for i in range(k):
            exact = _exact(per_layer_results[i].get(key)) or {"numel": 0, "changed": {}, "sparsity": {}}
            cons = per_layer_consecutive[i]
            step = {"changed": exact["changed"], "sparsity": exact["sparsity"],
                    "consecutive_sparsity": (_exact(cons.get(key)) or {}).get("sparsity") if cons is not None else None}
            if group is not None:
                step.update(group.at(i))
            steps.append(step)
        numel_exact = next((int(r.get(key, {}).get("numel") or 0) for r in per_layer_results if key in r), 0)
        layer_rows.append({"stack": key[0], "layer": key[1], "numel": numel_exact,
                           "mask_numel": group.numel if group is not None else 0, "steps": steps})
    layer_rows.sort(key=layer_order)

    warnings = _warnings(unmatched, total.numel)
    missing = [p.name for p in points if p.consecutive is None]
    if missing:
        warnings.append(f"No consecutive update for {', '.join(missing)}.")
    first = points[0].result
    return {
        "schema": SCHEMA,
        "base": first.get("base"),
        "base_sha": base_sha,
        "tolerance": tolerance,
        "tolerance_key": tolerance_key(tolerance),
        "tolerances": tolerances,
        "numel": total.numel,
        "final": {"name": points[-1].name, "subnet": total.c["subnet"][-1]},
        "checkpoints": checkpoints,
        "layers": layer_rows,
        "unmatched": unmatched,
        "warnings": warnings,
    }
