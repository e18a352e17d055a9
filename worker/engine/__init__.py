"""The diff engine: plain Python + torch. Imports nothing of Redis, HTTP or Dash.

Names are loaded on first use, so that `worker.engine.tolerance` (which the web process
reads at start-up) does not pull torch in with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.engine.analysis import (
        AnalysisOptions,
        PartResult,
        Plan,
        Progress,
        analyze,
        analyze_part,
        finish,
        plan_analysis,
    )
    from worker.engine.checkpoints.lora import LoraMergedSource
    from worker.engine.checkpoints.open import open_pair, open_source
    from worker.engine.checkpoints.sources import Piece, Source
    from worker.engine.checkpoints.spec import SourceSpec, parse_source
    from worker.engine.errors import EngineError
    from worker.engine.kernel.bins import CURVE_TOLERANCES, EXACT_TOLERANCES
    from worker.engine.masks import load_masks
    from worker.engine.overlap import overlap
    from worker.engine.pairing.pairs import check_compatible
    from worker.engine.result import ENGINE_VERSION
    from worker.engine.tolerance import Tolerance, tolerance_key

_HOME = {
    "worker.engine.result": ("ENGINE_VERSION",),
    "worker.engine.analysis": ("AnalysisOptions", "PartResult", "Plan", "Progress", "analyze",
                               "analyze_part", "finish", "plan_analysis"),
    "worker.engine.checkpoints.lora": ("LoraMergedSource",),
    "worker.engine.checkpoints.open": ("open_pair", "open_source"),
    "worker.engine.checkpoints.sources": ("Piece", "Source"),
    "worker.engine.checkpoints.spec": ("SourceSpec", "parse_source"),
    "worker.engine.errors": ("EngineError",),
    "worker.engine.kernel.bins": ("CURVE_TOLERANCES", "EXACT_TOLERANCES"),
    "worker.engine.masks": ("load_masks",),
    "worker.engine.overlap": ("overlap",),
    "worker.engine.pairing.pairs": ("check_compatible",),
    "worker.engine.tolerance": ("Tolerance", "tolerance_key"),
}
_WHERE = {name: module for module, names in _HOME.items() for name in names}

__all__ = [
    "AnalysisOptions",
    "CURVE_TOLERANCES",
    "ENGINE_VERSION",
    "EXACT_TOLERANCES",
    "EngineError",
    "LoraMergedSource",
    "PartResult",
    "Piece",
    "Plan",
    "Progress",
    "Source",
    "SourceSpec",
    "Tolerance",
    "analyze",
    "analyze_part",
    "check_compatible",
    "finish",
    "load_masks",
    "open_pair",
    "open_source",
    "overlap",
    "parse_source",
    "plan_analysis",
    "tolerance_key",
]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'worker.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
