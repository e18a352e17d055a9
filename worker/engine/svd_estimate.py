"""The SVD phase's cost of an analysis, from the checkpoints' headers alone (before it starts).

What the service tells a user at submission ("rank of all 224 matrices: about 6 min on this
worker"): the matrices the options select (the same choice as the pass makes) and the
estimated wall seconds of their SVD work on this process's cores (kernel/svd_cost.py,
calibrated on this machine).
"""

from __future__ import annotations

from worker.engine.analysis import AnalysisOptions, Plan, _wants_geometry, _wants_rank, cores
from worker.engine.kernel import svd_cost


def estimate(plan: Plan, options: AnalysisOptions) -> dict:
    """{"matrices": how many get SVDs, "seconds": estimated wall seconds on this worker's cores, "cores"}."""
    chosen = [(p.shape, _wants_rank(p, options.rank, plan.sampled), _wants_geometry(p, options.geometry, plan.sampled))
              for p in plan.pairing.pairs]
    chosen = [c for c in chosen if c[1] or c[2]]
    n = cores()
    return {"matrices": len(chosen), "seconds": round(svd_cost.seconds(chosen, n), 3) if chosen else 0.0, "cores": n}
