"""The diff engine: plain Python + torch. Imports nothing of Redis, HTTP or Dash."""

from worker.engine.analysis import (
    ENGINE_VERSION,
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
from worker.engine.kernel.accumulator import CURVE_TOLERANCES, EXACT_TOLERANCES, tolerance_key
from worker.engine.masks import load_masks
from worker.engine.overlap import overlap
from worker.engine.pairing.pairs import check_compatible

__all__ = [
    "CURVE_TOLERANCES",
    "ENGINE_VERSION",
    "EXACT_TOLERANCES",
    "AnalysisOptions",
    "EngineError",
    "LoraMergedSource",
    "PartResult",
    "Piece",
    "Plan",
    "Progress",
    "Source",
    "SourceSpec",
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
