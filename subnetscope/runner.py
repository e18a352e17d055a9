"""The engine runs behind `subnetscope.analyze/overlap/dynamics` and the CLI's analyze, overlap and
dynamics commands: one copy of each loop, progress reported through callbacks.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path


def analyze_pair(base: str | None, tuned: str, *, tolerance: float = 1e-5, rank: str = "off",
                 geometry: str = "off", device: str = "auto", token: str | None = None,
                 masks_dir: Path | None = None, placement: dict | None = None,
                 on_progress: Callable | None = None) -> dict:
    """Result (schema 1) of TUNED against BASE; a LoRA adapter as TUNED is merged onto BASE, or with
    no BASE onto the base its config names. `placement`: {"base_subfolder", "base_file", ...}."""
    from worker.engine import AnalysisOptions, analyze, open_pair, parse_source

    where = placement or {}
    pick = lambda side: {k: where.get(f"{side}_{k}") for k in ("subfolder", "file")}  # noqa: E731
    base_spec = parse_source(base, allow_any_path=True, **pick("base")) if base else None
    tuned_spec = parse_source(tuned, allow_any_path=True, **pick("tuned"))
    base_src, tuned_src = open_pair(base_spec, tuned_spec, token=token)
    with base_src, tuned_src:
        options = AnalysisOptions(tolerance=tolerance, rank=rank, device=device, geometry=geometry)
        return analyze(base_src, tuned_src, options, masks_dir=masks_dir, on_progress=on_progress)


def overlap_of(base: str, tuned: Sequence[str], *, labels: Sequence[str] | None = None,
               progress: Callable[[str], Callable | None] | None = None, **options) -> dict:
    """Overlap (overlap schema 1) of two or three finetunes of BASE; masks live in a temporary
    directory meanwhile. `progress(label)` gives each analysis its on_progress callback."""
    from worker.engine import EngineError, overlap

    if len(tuned) not in (2, 3):
        raise EngineError("incompatible", "Overlap takes a base and two or three finetuned checkpoints.")
    with tempfile.TemporaryDirectory(prefix="subnetscope-masks-") as tmp:
        files = []
        for i, t in enumerate(tuned):
            masks_dir = Path(tmp) / str(i)
            analyze_pair(base, t, masks_dir=masks_dir, on_progress=progress(t) if progress else None, **options)
            files.append(masks_dir / "masks.safetensors")
        return overlap(files, labels=list(labels or tuned))


class RunProgress:
    """What a dynamics run reports: doing(what), progress(engine progress), step(), close()."""

    def doing(self, what: str) -> None: ...
    def progress(self, p) -> None: ...
    def step(self) -> None: ...
    def close(self) -> None: ...


def dynamics_of(base: str | None, run: str, *, revisions: str | None = None, limit: int | None = None,
                tolerance: float = 1e-5, device: str = "auto", token: str | None = None,
                progress: Callable[[int, str], RunProgress] | None = None) -> dict:
    """Training dynamics (docs/METRICS.md, "Training dynamics") of a run's checkpoints;
    `progress(checkpoints, run label)` makes the progress reporter once the run is planned."""
    from worker.engine import AnalysisOptions, analyze
    from worker.engine.checkpoints.training_run import MAX_CHECKPOINTS, open_run, plan_run
    from worker.engine.dynamics import RunPoint, reduce_run, slim

    plan = plan_run(base, run, revisions=revisions, limit=MAX_CHECKPOINTS if limit is None else limit,
                    token=token, allow_any_path=True)
    base_src, sources = open_run(plan, token=token, allow_any_path=True)
    options = AnalysisOptions(tolerance=tolerance, device=device)
    bar = progress(len(sources), plan.run.label) if progress else RunProgress()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="subnetscope-run-") as tmp:
        stack.callback(bar.close)
        for src in (base_src, *sources):
            stack.callback(src.close)
        points, previous = [], base_src
        for i, (checkpoint, src) in enumerate(zip(plan.checkpoints, sources)):
            masks_dir = Path(tmp) / str(i)
            bar.doing(f"{checkpoint.name} vs base")
            result = analyze(base_src, src, options, masks_dir=masks_dir, on_progress=bar.progress)
            if i == 0:
                consecutive = result  # (c_0, c_1) is (base, c_1): the same analysis
            else:
                bar.doing(f"{checkpoint.name} vs {plan.checkpoints[i - 1].name}")
                consecutive = analyze(previous, src, options, on_progress=bar.progress)
            points.append(RunPoint(checkpoint.name, checkpoint.step, masks_dir / "masks.safetensors",
                                   slim(result), slim(consecutive)))
            previous = src
            bar.step()
        bar.doing("reducing")
        result = reduce_run(points)
    result["run"] = {"id": plan.run.label, "kind": plan.run.kind, "revisions": revisions,
                     "base_name": plan.base_name}
    return result
