"""Patch exports of finished analyses: their state in Redis, their job, their artifact path.

One export per analysis (the patch depends only on the pinned base and tuned): the state is
the hash `subnetscope:patch:<analysis id>` {status, progress (0..1), bytes, share, error,
updated_at}; the file is `<artifacts>/<analysis id>/patch.safetensors` (docs/PATCHES.md).
A failed export is queued again by the next request; a queued or running one is not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import WatchError

from app.core.queues import job_timeout, queue_for
from app.core.settings import Settings

PATCH_FILE = "patch.safetensors"
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


def patch_key(analysis_id: str) -> str:
    return f"subnetscope:patch:{analysis_id}"


def patch_path(settings: Settings, analysis_id: str) -> Path:
    return settings.artifacts_dir / analysis_id / PATCH_FILE


def patch_state(r: Redis, analysis_id: str) -> dict | None:
    raw = r.hgetall(patch_key(analysis_id))
    if not raw:
        return None
    out = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
           for k, v in raw.items()}
    return {"status": out.get("status"), "progress": float(out.get("progress") or 0.0),
            "bytes": int(out["bytes"]) if out.get("bytes") else None,
            "share": float(out["share"]) if out.get("share") else None,
            "error": json.loads(out["error"]) if out.get("error") else None}


def set_patch_state(r: Redis, analysis_id: str, **fields) -> None:
    values = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in fields.items() if v is not None}
    r.hset(patch_key(analysis_id), mapping={**values, "updated_at": str(time.time())})


def request_patch(r: Redis, settings: Settings, analysis_id: str, total_bytes: int) -> dict:
    """Queue the export unless one is queued, running or done; the state after."""
    key = patch_key(analysis_id)
    # HSET status=queued only if no other request queued it in between (a lost race queues nothing).
    with r.pipeline() as p:
        while True:
            try:
                p.watch(key)
                current = p.hget(key, "status")
                current = current.decode() if isinstance(current, bytes) else current
                if current in (QUEUED, RUNNING) or (current == DONE and patch_path(settings, analysis_id).is_file()):
                    p.unwatch()
                    return patch_state(r, analysis_id)
                p.multi()
                p.delete(key)
                p.hset(key, mapping={"status": QUEUED, "progress": "0", "updated_at": str(time.time())})
                p.execute()
                break
            except WatchError:  # another request wrote in between: look again
                continue
    queue_for(r, settings).enqueue(
        "worker.patches.run_patch_export", analysis_id,
        job_timeout=job_timeout(settings, 2 * total_bytes),
        result_ttl=0,  # no retry: a failed export (transient Hub error included) is queued by the next request failure_ttl=7 * 24 * 3600,
        description=f"patch export {analysis_id}",
    )
    return patch_state(r, analysis_id)
