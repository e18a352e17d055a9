"""Subnetwork overlap of two or three analyses of one base, from their packed masks.

Counts come from popcounts of packed bytes, so nothing is unpacked to bools and
memory stays at one tensor's mask per analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from worker.engine.errors import EngineError
from worker.engine.masks import iter_packed, read_metadata
from worker.engine.pairing.location import layer_order, locate


def _popcount(a: np.ndarray) -> int:
    return int(np.bitwise_count(a).sum(dtype=np.int64))


def _pair_stats(n: int, a: int, b: int, both: int) -> dict:
    union = a + b - both
    return {
        "numel": n,
        "a_changed": a,
        "b_changed": b,
        "both": both,
        "o1": both / a if a else None,
        "o2": both / b if b else None,
        "jaccard": both / union if union else None,
        "random_o1": b / n if n else None,
        "random_o2": a / n if n else None,
    }


class _Counts:
    """Venn region counts (bit strings like "110": in A and B, not C) for one group."""

    def __init__(self, k: int):
        self.k = k
        self.numel = 0
        self.regions = {format(i, f"0{k}b")[::-1]: 0 for i in range(1, 1 << k)}

    def add(self, numel: int, packed: list[np.ndarray]) -> None:
        # Every region ANDs at least one mask un-inverted, so padding bits never count.
        self.numel += numel
        for code in self.regions:
            acc = None
            for bit, arr in zip(code, packed):
                term = arr if bit == "1" else np.invert(arr)
                acc = term if acc is None else acc & term
            self.regions[code] += _popcount(acc)

    def size(self, i: int) -> int:
        return sum(c for code, c in self.regions.items() if code[i] == "1")

    def inter(self, i: int, j: int) -> int:
        return sum(c for code, c in self.regions.items() if code[i] == "1" and code[j] == "1")

    def stats(self) -> dict:
        out = _pair_stats(self.numel, self.size(0), self.size(1), self.inter(0, 1))
        out["venn"] = dict(self.regions)
        if self.k == 3:
            out["c_changed"] = self.size(2)
            names = "abc"
            out["pairs"] = {
                names[i] + names[j]: _pair_stats(self.numel, self.size(i), self.size(j), self.inter(i, j))
                for i, j in combinations(range(3), 2)
            }
        return out


def _intersectable(labels: list[str], shapes: list[dict[str, list[int]]]) -> tuple[list[str], list[dict]]:
    """Tensors every mask file holds with one shape (in the first file's order), and the others.

    Each tensor left out is reported as {"name", "reason", "shapes"}: reason "missing" (absent
    from some mask files) or "shape_mismatch"; shapes aligned with labels, null where absent.
    """
    order = list(shapes[0]) + [n for s in shapes[1:] for n in s if n not in shapes[0]]
    names, unmatched, seen = [], [], set()
    for name in order:
        if name in seen:
            continue
        seen.add(name)
        per_file = [s.get(name) for s in shapes]
        if any(shape is None for shape in per_file):
            unmatched.append({"name": name, "reason": "missing", "shapes": per_file})
        elif any(list(shape) != list(per_file[0]) for shape in per_file[1:]):
            unmatched.append({"name": name, "reason": "shape_mismatch", "shapes": per_file})
        else:
            names.append(name)
    return names, unmatched


def _warnings(unmatched: list[dict], numel: int) -> list[str]:
    if not unmatched:
        return []
    missing = sum(u["reason"] == "missing" for u in unmatched)
    odd = len(unmatched) - missing
    parts = ([f"{missing} present in only some of the analyses"] if missing else []) + (
        [f"{odd} with different compared shapes"] if odd else [])
    return [f"{len(unmatched)} tensors could not be intersected and are left out of every count "
            f"({'; '.join(parts)}; e.g. {unmatched[0]['name']}); the overlap covers the other {numel:,} elements."]


def overlap(mask_files: Sequence[Path], *, labels: Sequence[str] | None = None) -> dict:
    paths = [Path(p) for p in mask_files]
    if len(paths) not in (2, 3):
        raise EngineError("incompatible", "Overlap needs two or three analyses.")
    labels = list(labels) if labels else [p.parent.name for p in paths]
    metas = [read_metadata(p) for p in paths]
    tolerances = {m["tolerance"] for m, _ in metas}
    bases = {m.get("base_sha") for m, _ in metas}
    if len(bases) != 1:
        raise EngineError("incompatible", "These analyses have different base models (commits); overlap compares finetunes of one base.")
    if len(tolerances) != 1:
        raise EngineError("incompatible", f"These analyses used different tolerances ({', '.join(sorted(tolerances))}); use one tolerance.")
    names, unmatched = _intersectable(labels, [s for _, s in metas])
    shapes = metas[0][1]
    k = len(paths)
    total, layers, modules = _Counts(k), {}, {}
    readers = [iter_packed(p, names) for p in paths]
    for rows in zip(*readers):
        name = rows[0][0]
        packed = [arr for _, arr in rows]
        numel = int(np.prod(shapes[name]))
        where = locate(name)
        groups = (total, layers.setdefault((where.stack, where.layer), _Counts(k)),
                  modules.setdefault(where.module, _Counts(k)))
        for g in groups:
            g.add(numel, packed)
    result = {"schema": 1, "labels": labels, "tolerance": float(tolerances.pop()), "base_sha": bases.pop()}
    result.update(total.stats())
    result["unmatched"] = unmatched
    result["warnings"] = _warnings(unmatched, total.numel)
    result["layers"] = sorted(({"stack": s, "layer": l, **c.stats()} for (s, l), c in layers.items()), key=layer_order)
    result["modules"] = [{"module": m, **c.stats()} for m, c in modules.items()]
    return result
