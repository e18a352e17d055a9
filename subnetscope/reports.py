"""Which report a JSON document gets: analysis, overlap or training run (frontend/report.py draws them)."""

from __future__ import annotations

from collections.abc import Mapping


def kind_of(doc: Mapping) -> str:
    if "summary" in doc and "tensors" in doc:
        return "analysis"
    if "checkpoints" in doc:
        return "run"
    if "o1" in doc and "labels" in doc:
        return "overlap"
    raise ValueError("not an analysis result, an overlap or a training-run result (docs/CONTRACTS.md)")


def render(doc: Mapping, overlap: Mapping | None = None) -> str:
    """The report's HTML for any of the three documents."""
    from frontend import report

    kind = kind_of(doc)
    if overlap is not None and kind != "analysis":
        raise ValueError("--overlap goes with an analysis result")
    if kind == "analysis":
        return report.analysis_report(doc, overlap=overlap)
    if kind == "run":
        return report.run_report(doc)
    return report.overlap_report(doc)
