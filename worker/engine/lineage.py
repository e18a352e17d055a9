"""Which candidate is a checkpoint's parent? Sampled bit-identity, read by range (metrics.md,
"Patches and lineage"; the estimate and its interval are defined in docs/METRICS.md).

For a target T and a candidate C, the matrices (tensors of two or more dimensions) that pair
by name and shape (pairing/pairs.py; resized vocabularies: the common rows) are cut into
blocks of `block` contiguous elements; blocks are drawn uniformly without replacement over
all of them, so every element position is equally likely, and only those blocks are read from
either side: over the Hub, a candidate costs about `budget` of its weight bytes. s is the
share of sampled elements that are identical (bit for bit; across dtypes, equal after casting
both to the pair's compare dtype). Its interval is Wilson's at 95 % on the effective sample
size n / deff, where deff is the design effect of sampling blocks (the ratio estimator's
between-block variance over the variance of as many independent elements), at least 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from worker.engine.checkpoints.safetensors_format import RAW_INT
from worker.engine.checkpoints.sources import Piece, Source
from worker.engine.pairing.location import locate
from worker.engine.pairing.pairs import Pair, pair_tensors

Z95 = 1.959963984540054
DEFAULT_BUDGET = 0.015  # share of a candidate's weight bytes read
MAX_BLOCKS = 1000
MIN_BLOCK = 64


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n (possibly fractional) trials."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, center - half), min(1.0, center + half)


def interval(identical: np.ndarray, sizes: np.ndarray) -> dict:
    """s, its design effect and the widened Wilson interval from per-block counts."""
    n = float(sizes.sum())
    m = len(sizes)
    if n == 0:
        return {"s": None, "low": None, "high": None, "deff": None, "sampled": 0, "blocks": 0}
    p = float(identical.sum()) / n
    deff = 1.0
    if m > 1 and 0 < p < 1:
        resid = identical - p * sizes
        var_blocks = m / (m - 1) * float((resid ** 2).sum()) / (n * n)
        deff = max(1.0, var_blocks / (p * (1 - p) / n))
    low, high = wilson(p, n / deff)
    return {"s": p, "low": low, "high": high, "deff": deff, "sampled": int(n), "blocks": m}


def plan_blocks(pairs: list[Pair], budget_bytes: int, seed: int) -> tuple[int, list[tuple[Pair, int, int]]]:
    """(block size, [(pair, start, stop)]) drawn uniformly over the pairs' common elements."""
    itemsize = max((p.base.itemsize for p in pairs), default=2)
    elements = max(1, budget_bytes // itemsize)
    block = max(MIN_BLOCK, elements // MAX_BLOCKS)
    counts = np.array([math.ceil(p.numel / block) for p in pairs], dtype=np.int64)
    total = int(counts.sum())
    want = min(total, max(1, elements // block))
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=want, replace=False)) if total else []
    ends = np.cumsum(counts)
    out = []
    for g in chosen:
        i = int(np.searchsorted(ends, g, side="right"))
        k = int(g - (ends[i] - counts[i]))
        pair = pairs[i]
        out.append((pair, k * block, min((k + 1) * block, pair.numel)))
    return block, out


def _same(a: torch.Tensor, b: torch.Tensor, pair: Pair) -> int:
    if pair.base.dtype == pair.tuned.dtype:
        w = pair.base.itemsize
        return int((a.view(RAW_INT[w]) == b.view(RAW_INT[w])).sum())
    return int((a.to(pair.compare_dtype) == b.to(pair.compare_dtype)).sum())


def compare(target: Source, candidate: Source, *, budget: float = DEFAULT_BUDGET, seed: int = 0) -> dict:
    """The sampled identity of `target` with `candidate`: s, interval, per layer, mismatches, bytes."""
    pairing = pair_tensors(candidate, target)
    pairs = [p for p in pairing.pairs if len(p.shape) >= 2 and p.numel > 0]
    before_c, before_t = candidate.bytes_read, target.bytes_read
    block, blocks = plan_blocks(pairs, int(budget * candidate.total_bytes), seed)
    blocks.sort(key=lambda b: (b[0].base.file, b[0].base.offset, b[1]))
    c_pieces = [Piece(p.base.name, a, z) for p, a, z in blocks]
    t_pieces = [Piece(p.tuned.name, a, z) for p, a, z in blocks]
    identical = np.zeros(len(blocks), dtype=np.float64)
    sizes = np.array([z - a for _, a, z in blocks], dtype=np.float64)
    t_iter = target.iter_pieces(t_pieces)
    for i, (cp, cv) in enumerate(candidate.iter_pieces(c_pieces)):
        tp, tv = next(t_iter)
        identical[i] = _same(cv, tv, blocks[i][0])
        candidate.release(cp)
        target.release(tp)
    result = interval(identical, sizes)
    by_layer: dict[tuple, list[int]] = {}
    for i, (pair, _, _) in enumerate(blocks):
        where = locate(pair.name)
        by_layer.setdefault((where.stack, where.layer), []).append(i)
    layers = []
    for (stack, layer), idx in sorted(by_layer.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] if kv[0][1] is not None else -1)):
        layers.append({"stack": stack, "layer": layer, **interval(identical[idx], sizes[idx])})
    u = pairing.unmatched
    mismatched = ([{"name": n, "reason": "only in the candidate"} for n in u["only_base"]]
                  + [{"name": n, "reason": "only in the target"} for n in u["only_tuned"]]
                  + [{"name": d["name"], "reason": f"shape {d['base_shape']} in the candidate, {d['tuned_shape']} "
                                                   "in the target"} for d in u["shape_mismatch"]]
                  + [{"name": d["name"], "reason": f"unsupported dtype {d['base_dtype']} / {d['tuned_dtype']}"}
                     for d in u["unsupported"]])
    read = candidate.bytes_read - before_c
    return {
        "candidate": candidate.describe(), **result,
        "matrices": len(pairs), "block_elements": block,
        "resized": [d["name"] for d in u["resized"]],
        "mismatched": mismatched,
        "bytes_read": read, "target_bytes_read": target.bytes_read - before_t,
        "candidate_bytes": candidate.total_bytes,
        "read_share": read / candidate.total_bytes if candidate.total_bytes else None,
        "layers": layers,
    }


def lineage(target: Source, candidates: list[Source], *, budget: float = DEFAULT_BUDGET, seed: int = 0,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Candidates ranked by s (highest first), each with its interval; `separated` says whether the
    first one's interval lies wholly above the second's."""
    rows = []
    for i, c in enumerate(candidates):
        rows.append(compare(target, c, budget=budget, seed=seed))
        if progress is not None:
            progress(i + 1, len(candidates))
    rows.sort(key=lambda r: -1.0 if r["s"] is None else -r["s"])
    separated = len(rows) > 1 and rows[0]["low"] is not None and rows[1]["high"] is not None \
        and rows[0]["low"] > rows[1]["high"]
    return {"target": target.describe(), "budget": budget, "seed": seed, "candidates": rows,
            "separated": separated}
