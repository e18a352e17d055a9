"""Subnetscope for notebooks and scripts: which parameters did a finetuning run change?

    import subnetscope
    r = subnetscope.analyze("org/base", "org/tuned", tolerance=1e-5)
    r.sparsity, r.summary_text, r.top_tensors(5)
    subnetscope.report(r, "report.html")

Every call runs the engine in this process (no server), with a progress bar that draws in
Jupyter (tqdm.auto); results carry the same numbers as the CLI's JSON (`.data` is that JSON).
Definitions: docs/METRICS.md. The packages `app`, `worker` and `frontend` are the service
behind this; this package is the distribution's public face.
"""

from __future__ import annotations

from .api import analyze, dynamics, load_masks, overlap, report
from .results import AnalysisResult, CheckpointStat, DynamicsResult, OverlapResult, TensorStat

__all__ = ["analyze", "overlap", "dynamics", "load_masks", "report", "AnalysisResult", "OverlapResult",
           "DynamicsResult", "TensorStat", "CheckpointStat"]
