"""Content ids: the same checkpoints (by content), options and engine give the same id, hence one permalink."""

from __future__ import annotations

import hashlib
import json
import re

from worker.engine.tolerance import tolerance_key

_ID = re.compile(r"^[0-9a-f]{16}$")


def content_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


def analysis_id(engine_version: str, base_sha: str, tuned_sha: str, tolerance: float, rank: str,
                geometry: str = "off", *, base_where: dict | None = None, tuned_where: dict | None = None) -> str:
    """The permalink: same checkpoints (by content), options and engine give the same id.

    geometry joins the id only when on, so every id made before it existed stays the same.
    base_where / tuned_where ({"subfolder", "file"} as SourceSpec.placement() gives them) join it
    only when either is set: two subfolders of one Hub commit are two checkpoints.
    """
    extra = [geometry] if geometry != "off" else []
    if base_where or tuned_where:
        extra.append(json.dumps([base_where or {}, tuned_where or {}], sort_keys=True))
    return content_id(engine_version, base_sha, tuned_sha, tolerance_key(tolerance), rank, *extra)
