"""RQ task: export the lossless patch of a finished analysis (docs/PATCHES.md) as an artifact.

Progress (bytes exported / tuned bytes) goes to the patch's Redis hash (app/core/patches.py);
the file is written beside the analysis's masks and renamed into place when complete, so a
download never sees half a patch.
"""

from __future__ import annotations

import logging
import time

from app.core.patches import DONE, FAILED, RUNNING, patch_path, set_patch_state
from app.core.store import DONE as ANALYSIS_DONE
from worker.engine import EngineError
from worker.engine.patch.export import export_patch
from worker.jobrun import JobRun

log = logging.getLogger(__name__)


def run_patch_export(analysis_id: str) -> str:
    ctx = JobRun.current()
    r, aid = ctx.r, analysis_id
    raw = ctx.store.get_raw(aid)
    if raw is None or raw.get("status") != ANALYSIS_DONE:
        set_patch_state(r, aid, status=FAILED, error={"code": "bad_request",
                                                      "message": "Only a finished analysis can be exported."})
        return FAILED
    set_patch_state(r, aid, status=RUNNING, progress=0.0)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            set_patch_state(r, aid, progress=round(done / total, 4) if total else 1.0)

    def work() -> str:
        target = patch_path(ctx.settings, aid)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with ctx.opened(aid, raw) as (base, tuned, _options):
                summary = export_patch(base, tuned, target, progress=progress)
        except OSError as exc:
            raise EngineError("disk_full" if exc.errno == 28 else "internal",
                              f"Writing the patch failed ({exc.strerror}).") from None
        set_patch_state(r, aid, status=DONE, progress=1.0, bytes=summary["patch_bytes"], share=summary["share"])
        log.info("patch of analysis %s: %d bytes (%.2f%%)", aid, summary["patch_bytes"], 100 * summary["share"])
        return DONE

    return ctx.guarded(f"patch export {aid}", work,
                       fail=lambda error: set_patch_state(r, aid, status=FAILED, error=error),
                       internal="The patch export stopped on an internal error; the worker log has the details.")
