"""The reduce of a training run (docs/METRICS.md, "Training dynamics"): its finished analyses' results
from Redis and masks from the artifacts, handed to the engine's reduce_run."""

from __future__ import annotations

import json
from pathlib import Path

from app.core.artifacts import MASKS_FILE, artifact_store
from app.core.settings import Settings
from app.core.store import DONE, Store
from worker.engine import EngineError
from worker.engine.dynamics import RunPoint, reduce_run, slim


def reduce_points(store: Store, settings: Settings, rid: str, request: dict, *, on_progress=None) -> dict:
    """Reduce a run from its analyses (all done): results from Redis, masks from the artifacts."""
    def result_of(aid: str, name: str) -> dict:
        raw = store.get_raw(aid) or {}
        if raw.get("status") != DONE or not raw.get("result"):
            raise EngineError("not_found", f"The analysis {aid} of checkpoint {name} is not done "
                                           f"({raw.get('status', 'missing')}); the run is reduced once it is.")
        return slim(json.loads(raw["result"]))

    artifacts = artifact_store(settings)
    points = []
    for c in request["checkpoints"]:
        main = result_of(c["analysis"], c["name"])
        cons = main if c["consecutive"] == c["analysis"] else result_of(c["consecutive"], c["name"])
        # A missing file reaches the reduce as a path that does not exist, which it reports by analysis.
        masks = artifacts.masks_path(c["analysis"]) or Path(settings.artifacts_dir) / c["analysis"] / MASKS_FILE
        points.append(RunPoint(c["name"], c["step"], masks,
                               main, cons, analysis=c["analysis"], consecutive_analysis=c["consecutive"]))
    result = reduce_run(points, on_progress=on_progress)
    result["run"] = {"id": rid, **(request.get("run_source") or {}), "revisions": request.get("revisions"),
                     "base_name": request.get("base_name")}
    return result
