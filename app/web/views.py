"""Stored records -> API bodies: derived status, JSON assembly, CSV of tensor records."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timezone

from worker.engine.tolerance import tolerance_key


def iso(ts: str | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_of(raw: dict[str, str], alive: bool, stall_seconds: float) -> str:
    """`stalled` is derived: a running analysis whose worker stopped beating or reporting."""
    status = raw.get("status", "queued")
    if status != "running":
        return status
    if not alive:
        return "stalled"
    last = float(raw.get("progress_at") or raw.get("updated_at") or 0)
    if time.time() - last > stall_seconds:
        return "stalled"
    return status


def analysis_json(raw: dict[str, str], status: str, partial: list[str] | None) -> str:
    """The GET body as text; result and partial records are spliced in without re-encoding."""
    aid = raw["id"]
    meta = {
        "id": aid,
        "status": status,
        "progress": json.loads(raw.get("progress") or "null"),
        "error": json.loads(raw["error"]) if raw.get("error") else None,
        "request": public_request(json.loads(raw.get("request") or "{}")),
        "created_at": iso(raw.get("created_at")),
        "updated_at": iso(raw.get("updated_at")),
        "runs": int(raw.get("runs") or 0),
        "url": f"/a/{aid}",
    }
    if status == "stalled":
        meta["stalled_reason"] = (
            "The worker running this analysis stopped reporting; it resumes when a worker picks it up again."
        )
    head = json.dumps(meta)[:-1]
    result = raw.get("result") if status == "done" else None
    tail = f', "result": {result or "null"}'
    if partial is not None:
        tail += f', "partial": [{",".join(partial)}]'
    return head + tail + "}"


def public_request(request: dict) -> dict:
    # The token never reaches storage, but be explicit about what is shown.
    return {k: v for k, v in request.items() if k not in ("token", "total_bytes")}


def list_item(row: dict[str, str | None]) -> dict:
    request = json.loads(row.get("request") or "{}")
    aid = row["id"]
    return {
        "id": aid,
        "status": row.get("status") or "queued",
        "created_at": iso(row.get("created_at")),
        "updated_at": iso(row.get("updated_at")),
        "base": request.get("base", ""),
        "tuned": request.get("tuned", ""),
        "tolerance": request.get("tolerance", 1e-5),
        "rank": request.get("rank", "off"),
        "summary": json.loads(row["summary"]) if row.get("summary") else None,
        "url": f"/a/{aid}",
    }


SCALAR_COLUMNS = ("name", "stack", "layer", "module", "expert", "shape", "dtype", "tuned_dtype", "compare_dtype", "numel", "nan",
                  "added", "removed", "row_coverage", "col_coverage", "delta_fro", "base_fro", "ratio", "max_abs_delta",
                  "rank", "rank_ratio")


def tensors_csv(records: list[dict], tolerances: list[float] | None) -> str:
    """One row per tensor: scalars, then changed and sparsity at each tolerance."""
    if tolerances is None:
        keys: list[str] = []
        for rec in records:
            for k in rec.get("changed", {}):
                if k not in keys:
                    keys.append(k)
    else:
        keys = [tolerance_key(t) for t in tolerances]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*SCALAR_COLUMNS, *(f"changed@{k}" for k in keys), *(f"sparsity@{k}" for k in keys)])
    for rec in records:
        row = []
        for col in SCALAR_COLUMNS:
            v = rec.get(col)
            row.append("x".join(map(str, v)) if col == "shape" and isinstance(v, list) else ("" if v is None else v))
        changed = rec.get("changed", {})
        numel = rec.get("numel") or 0
        row += [changed.get(k, "") for k in keys]
        row += [(1 - changed[k] / numel) if numel and k in changed else "" for k in keys]
        w.writerow(row)
    return out.getvalue()
