"""Splitting one analysis into tensor groups of about equal bytes (fan-out over workers).

Pure functions over a plan (analysis.plan_analysis): who runs the groups, and how their
records and mask parts come back together, is the caller's business. Each group is run
with `analyze_part(..., only=group)`; `finish(...)` over the union of the groups' records
(and their mask parts, in one masks directory) gives exactly what `analyze` gives, because
records are per tensor and the result is built, and every sum taken, in tensor-name order.
"""

from __future__ import annotations

import math

from worker.engine.analysis import Plan, pair_bytes

# More groups than this would cost more in job overhead (opening the sources, a job each)
# than they gain in balance.
MAX_GROUPS = 256


def group_count(total_bytes: int, group_bytes: int, tensors: int, *, max_groups: int = MAX_GROUPS) -> int:
    """Groups of about `group_bytes` each: ceil(total / group_bytes), at least 1, at most one per tensor."""
    if total_bytes <= 0 or tensors <= 0:
        return 1
    wanted = math.ceil(total_bytes / max(1, group_bytes))
    return max(1, min(wanted, tensors, max_groups))


def tensor_groups(plan: Plan, groups: int) -> list[list[str]]:
    """The compared tensors in `groups` runs of consecutive tensors (file order, so each group reads
    its stretch of the files sequentially) of about equal compared bytes.

    A tensor goes to the group its byte midpoint falls in, so every group is within half a tensor
    of total / groups at each end; groups left empty (a tensor bigger than a group) are dropped, so
    fewer groups may come back. Every tensor is in exactly one group.
    """
    pairs = plan.pairing.pairs
    if not pairs:
        return []
    groups = max(1, min(groups, len(pairs)))
    total = sum(pair_bytes(p) for p in pairs)
    out: list[list[str]] = [[] for _ in range(groups)]
    done = 0
    for index, p in enumerate(pairs):
        size = pair_bytes(p)
        if total:
            k = min(groups - 1, int((done + size / 2) * groups // total))
        else:  # only empty tensors: by count
            k = index * groups // len(pairs)
        out[k].append(p.name)
        done += size
    return [g for g in out if g]


def group_bytes(plan: Plan, groups: list[list[str]]) -> list[int]:
    """Compared bytes of each group."""
    size = {p.name: pair_bytes(p) for p in plan.pairing.pairs}
    return [sum(size[n] for n in g) for g in groups]
