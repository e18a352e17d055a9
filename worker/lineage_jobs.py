"""RQ task: rank lineage candidates (worker/engine/lineage.py) for a stored request."""

from __future__ import annotations

import contextlib
import logging

from app.core.lineage_jobs import DONE, FAILED, RUNNING, get_lineage, set_lineage
from worker.engine import open_source, parse_source
from worker.engine.lineage import lineage
from worker.jobrun import JobRun

log = logging.getLogger(__name__)


def run_lineage(job_id: str) -> str:
    ctx = JobRun.current()
    r = ctx.r
    state = get_lineage(r, job_id)
    if state is None or state["status"] == DONE:
        return state["status"] if state else "missing"
    request = state["request"]
    set_lineage(r, job_id, status=RUNNING)

    def open_one(text: str):
        # Local paths only under the server's root, as for analyses; Hub repos without a token.
        spec = parse_source(text, local_root=ctx.settings.checkpoints_root, allow_any_path=False)
        return open_source(spec, token=ctx.settings.hf_token, local_root=ctx.settings.checkpoints_root,
                           allow_any_path=False)

    def work() -> str:
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(open_one(request["tuned"]))
            candidates = [stack.enter_context(open_one(c)) for c in request["candidates"]]
            result = lineage(target, candidates, budget=request["budget"], seed=request["seed"])
        # Show what the user typed, never a server path.
        shown = dict(zip((c.describe()["sha"] for c in candidates), request["candidates"]))
        for row in result["candidates"]:
            row["label"] = shown.get(row["candidate"]["sha"], row["candidate"]["id"])
        result["target"]["label"] = request["tuned"]
        set_lineage(r, job_id, status=DONE, result=result)
        return DONE

    return ctx.guarded(f"lineage {job_id}", work,
                       fail=lambda error: set_lineage(r, job_id, status=FAILED, error=error),
                       internal="The lineage job stopped on an internal error; the worker log has the details.")
