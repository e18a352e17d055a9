"""analyze, overlap, dynamics, load_masks, report: the notebook API over the engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .results import AnalysisResult, DynamicsResult, OverlapResult

_PLACEMENT = ("base_subfolder", "base_file", "tuned_subfolder", "tuned_file")


def analyze(base: str | None, tuned: str, *, tolerance: float = 1e-5, rank: str = "off", geometry: str = "off",
            device: str = "auto", token: str | None = None, masks_dir: str | Path | None = None,
            progress: bool = True, **placement) -> AnalysisResult:
    """Diff TUNED against BASE (Hub ids `org/name[@rev]` or local directories; TUNED may be a LoRA
    adapter, then BASE may be None). `masks_dir` keeps masks.safetensors of the changed elements
    there; `placement`: base_subfolder, base_file, tuned_subfolder, tuned_file."""
    from .progress import byte_bar
    from .runner import analyze_pair

    unknown = set(placement) - set(_PLACEMENT)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; placement options are {_PLACEMENT}")
    update, close = byte_bar(Path(tuned).name or tuned, quiet=not progress, notebook=True)
    try:
        data = analyze_pair(base, tuned, tolerance=tolerance, rank=rank, geometry=geometry, device=device,
                            token=token, masks_dir=Path(masks_dir) if masks_dir else None, placement=placement,
                            on_progress=update)
    finally:
        close()
    return AnalysisResult.from_json(data, masks=Path(masks_dir) / "masks.safetensors" if masks_dir else None)


def overlap(base_or_results, tuned: Sequence[str] | None = None, *, labels: Sequence[str] | None = None,
            tolerance: float = 1e-5, device: str = "auto", token: str | None = None,
            progress: bool = True) -> OverlapResult:
    """Subnetwork overlap of two or three finetunes of one base: `overlap(base, [t1, t2])` runs
    the analyses; `overlap([r1, r2])` uses analyses made with `masks_dir` (same base, same t)."""
    from worker.engine import overlap as engine_overlap

    if tuned is None:
        results = list(base_or_results)
        missing = [r.tuned for r in results if r.masks is None]
        if missing:
            raise ValueError(f"analyses without masks (pass masks_dir= to analyze): {missing}")
        data = engine_overlap([r.masks for r in results], labels=list(labels or [r.tuned for r in results]))
        return OverlapResult.from_json(data)
    from .progress import byte_bar
    from .runner import overlap_of

    closers = []

    def bar(label: str):
        update, close = byte_bar(Path(label).name or label, quiet=not progress, notebook=True)
        closers.append(close)
        return update

    try:
        data = overlap_of(base_or_results, list(tuned), labels=labels, progress=bar, tolerance=tolerance,
                          device=device, token=token)
    finally:
        for close in closers:
            close()
    return OverlapResult.from_json(data)


def dynamics(base: str | None, run: str, *, revisions: str | None = None, tolerance: float = 1e-5,
             device: str = "auto", token: str | None = None, max_checkpoints: int | None = None,
             progress: bool = True) -> DynamicsResult:
    """Training dynamics over RUN's checkpoints (checkpoint-<step>/ folders or Hub branches/tags)."""
    from .progress import RunBar
    from .runner import dynamics_of

    data = dynamics_of(base, run, revisions=revisions, limit=max_checkpoints, tolerance=tolerance, device=device,
                       token=token, progress=lambda n, label: RunBar(n, label, quiet=not progress, notebook=True))
    return DynamicsResult.from_json(data)


def load_masks(path_or_result) -> dict:
    """{tensor name: torch.BoolTensor of changed elements} from masks.safetensors or an analysis."""
    from worker.engine.masks import load_masks as _load

    path = getattr(path_or_result, "masks", None) or path_or_result
    if path is None:
        raise ValueError("this analysis kept no masks; pass masks_dir= to analyze")
    path = Path(path)
    return _load(path / "masks.safetensors" if path.is_dir() else path)


def report(result, path: str | Path | None = None, *, overlap=None) -> str:
    """The single-file HTML report of an analysis, overlap or run (a typed result or its JSON);
    written to `path` when given; returns the HTML."""
    from .reports import render

    doc = getattr(result, "data", result)
    page = render(doc, overlap=getattr(overlap, "data", overlap))
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


