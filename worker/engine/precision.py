"""The precision view of a result: is the sparsity a bf16 storage artifact? (metrics.md,
"Precision and magnitude" and "Similarity"; the JSON is documented in docs/CONTRACTS.md.)

The kernel counts, in its one pass, every element by the magnitude bin of its base value
(bins.py: zero, subnormal, each binary exponent, inf/NaN) and the changed ones by bin and
tolerance class, by bin and ratio bucket |Delta| / spacing(w_base), and for pairs wider than
bf16 the classes after rounding both sides to bf16 (and fp16); plus the float64 sums of a
cosine. This module turns those sums into a tensor's record fields and adds records up
into the layer, module and model figures. Pure bookkeeping: no weights, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from worker.engine.kernel.bins import COUNTERFACTUALS, MAG_BINS, RATIO_BUCKETS, magnitude_label
from worker.engine.tolerance import tolerance_key


def _cosine(dot: float, base_sq: float, tuned_sq: float) -> float | None:
    if not (base_sq > 0 and tuned_sq > 0):
        return None
    c = dot / math.sqrt(base_sq * tuned_sq)
    return c if math.isfinite(c) else None


def tensor_precision(acc, exact: Sequence[float]) -> dict:
    """A tensor's record fields: tuned_fro, cosine (float64 sums) and precision (or None when the
    kernel measured none: an empty tensor, a dtype without a float format)."""
    p = acc.precision
    if p is None:
        return {"tuned_fro": None, "cosine": None, "precision": None}
    out = {"tuned_fro": math.sqrt(p.tuned_sq), "cosine": _cosine(p.dot, acc.base_sq, p.tuned_sq), "precision": None}
    bins = np.flatnonzero(p.compared)
    classes = p.classes  # per (magnitude bin, tolerance class); class 0 is not used
    ratio = p.ratio[:, :RATIO_BUCKETS]  # per (bin, ratio bucket): the values that moved
    # Class c holds the elements changed at exactly the c smallest exact tolerances: changed(t_j) = classes > j.
    above = np.cumsum(classes[:, ::-1], axis=1)[:, ::-1]  # above[:, c] = sum of classes >= c
    keys = [tolerance_key(t) for t in exact]
    cells = np.argwhere(ratio)
    cf = p.counterfactual
    out["precision"] = {
        "bins": bins.tolist(),
        "compared": p.compared[bins].tolist(),
        "changed": {k: above[bins, j + 1].tolist() for j, k in enumerate(keys)},
        "ratio": np.column_stack([cells, ratio[cells[:, 0], cells[:, 1]]]).tolist(),
        "counterfactual": {COUNTERFACTUALS[i]: {k: int(cf[i, j + 1:].sum()) for j, k in enumerate(keys)}
                           for i in range(acc.cf_kinds)},
    }
    return out


def merge(records: Iterable[dict], *, with_ratio: bool = False) -> dict | None:
    """The precision figures of a set of records (a layer, a module, the model): compared and changed
    per magnitude bin summed; per counterfactual, the elements of the tensors it applies to, their
    changed counts as stored and after rounding; the cosine of the concatenated tensors."""
    # numpy over every magnitude bin (a few thousand records' lists add up at C speed)
    compared = np.zeros(MAG_BINS, np.int64)
    changed: dict[str, np.ndarray] = {}
    ratio = np.zeros((MAG_BINS, RATIO_BUCKETS), np.int64)
    cf: dict[str, dict] = {}
    dot = base_sq = tuned_sq = 0.0
    cosine_ok = True
    seen = False
    for r in records:
        p = r.get("precision")
        if p is None:
            continue
        seen = True
        at = np.asarray(p["bins"], np.int64)  # distinct within a record: fancy-indexed += adds each once
        compared[at] += np.asarray(p["compared"], np.int64)
        for key, counts in p["changed"].items():
            if key not in changed:
                changed[key] = np.zeros(MAG_BINS, np.int64)
            changed[key][at] += np.asarray(counts, np.int64)
        if with_ratio and p["ratio"]:
            cells = np.asarray(p["ratio"], np.int64)  # distinct (bin, bucket) cells
            ratio[cells[:, 0], cells[:, 1]] += cells[:, 2]
        for name, rounded in p["counterfactual"].items():
            entry = cf.setdefault(name, {"numel": 0, "tensors": 0, "stored": {}, "rounded": {}})
            entry["numel"] += r["numel"]
            entry["tensors"] += 1
            for key, c in rounded.items():
                entry["rounded"][key] = entry["rounded"].get(key, 0) + c
                entry["stored"][key] = entry["stored"].get(key, 0) + r["changed"][key]
        b2, u2 = r["base_fro"] ** 2, (r.get("tuned_fro") or 0.0) ** 2
        if r.get("cosine") is None and b2 > 0 and u2 > 0:
            cosine_ok = False
        dot += (r.get("cosine") or 0.0) * math.sqrt(b2 * u2)
        base_sq += b2
        tuned_sq += u2
    if not seen:
        return None
    at = np.flatnonzero(compared)  # every record's bins hold compared elements
    bins = at.tolist()
    out = {
        "bins": bins,
        "labels": [magnitude_label(b) for b in bins],
        "compared": compared[at].tolist(),
        "changed": {key: row[at].tolist() for key, row in changed.items()},
        "counterfactual": cf,
        "cosine": _cosine(dot, base_sq, tuned_sq) if cosine_ok else None,
    }
    if with_ratio:
        grid = ratio[at]
        moved = grid.sum(axis=1).tolist()
        out["ratio"] = {"bins": bins, "counts": grid.tolist()}
        out["one_step_share"] = [int(row[0]) / m if m else None for row, m in zip(grid, moved)]
    return out
