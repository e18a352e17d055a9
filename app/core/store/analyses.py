"""Analyses: one Redis hash per analysis, keyed by its content id, and its attempts.

Nothing here expires but the attempt's liveness key: a permalink must keep working long after
RQ has forgotten the job (its result TTL is 500 s). Fields that hold structured data are JSON
strings, so a read returns them without re-encoding (the result of an 80-layer model is a few
MB, and it is spliced into the response as is).

An *attempt* is one go at computing an analysis (an RQ job that claimed it); an analysis whose
attempt died is resumed by the next one from its finished tensor records. The hash's `runs`
field (kept under that name: it is in the API) counts its attempts.
"""

from __future__ import annotations

import json
import time

from app.core.store.base import ALIVE_TTL_S, MAX_LOST_ATTEMPTS, PREFIX, RUNNING, Keyed, KeyTemplate, dumps, enc
from app.core.store.tokens import token_key
from worker.engine.tolerance import tolerance_key

RECENT = f"{PREFIX}:analyses"  # zset id -> created_at
RUNNING_SET = f"{PREFIX}:running"  # ids whose status is running, for the janitor
# One per computation actually begun (the key keeps its historical name).
ATTEMPTS_STARTED = f"{PREFIX}:stats:analysis_runs_started"


analysis_key = KeyTemplate("analysis")  # the record: one hash
# Finished tensor records of an attempt in progress, in order: the partial result and the resume state.
tensors_key = analysis_key.beside("tensors")
alive_key = analysis_key.beside("alive")  # held (expiring) by the attempt at work


def lost_attempts_error(analysis_id: str) -> str:
    return json.dumps({"code": "worker_lost", "message": (
        f"The worker running this analysis died {MAX_LOST_ATTEMPTS} times before finishing it (killed, out of "
        "memory or crashed), so it is not run again automatically; finished tensors are kept, and "
        f"POST /api/analyses/{analysis_id}/retry resumes it.")})


def brief_summary(result: dict) -> dict:
    """What the recent-analyses list shows, without the whole result."""
    summary = result.get("summary") or {}
    tol = tolerance_key((result.get("options") or {}).get("tolerance", 1e-5))
    return {
        "base": result.get("base"),
        "tuned": result.get("tuned"),
        "tolerance": tol,
        "sparsity": (summary.get("sparsity") or {}).get(tol),
        "numel": summary.get("numel"),
        "tensors": summary.get("tensors"),
    }


class Analyses(Keyed):
    """Store methods of analyses: records (the web side) and attempts (the worker side)."""

    # --- records ----------------------------------------------------------------------

    def create_analysis(self, analysis_id: str, request: dict, progress: dict) -> int:
        """1 created, 2 re-armed (its last attempt had failed), 0 already there."""
        return int(self._lua("create_record", [analysis_key(analysis_id), RECENT],
                             [analysis_id, repr(time.time()), json.dumps(request), json.dumps(progress)]))

    def drop_analysis(self, analysis_id: str) -> None:
        """Undo a creation whose job could not be enqueued, so no record lingers as queued."""
        with self.r.pipeline() as p:
            p.delete(analysis_key(analysis_id), tensors_key(analysis_id), token_key(analysis_id))
            p.zrem(RECENT, analysis_id)
            p.execute()

    def get_raw(self, analysis_id: str) -> dict[str, str] | None:
        return self._hash(analysis_key(analysis_id))

    def set_fields(self, analysis_id: str, **fields) -> None:
        fields["updated_at"] = repr(time.time())
        self.r.hset(analysis_key(analysis_id), mapping={k: enc(v) for k, v in fields.items()})

    def is_alive(self, analysis_id: str) -> bool:
        return bool(self.r.exists(alive_key(analysis_id)))

    def partial(self, analysis_id: str) -> list[str]:
        return [b.decode() for b in self.r.lrange(tensors_key(analysis_id), 0, -1)]

    def recent(self, offset: int, limit: int) -> tuple[int, list[dict[str, str]]]:
        fields = ("id", "status", "created_at", "updated_at", "request", "summary")
        total, rows = self._newest(RECENT, analysis_key, fields, offset, limit)
        return total, [{f: (v.decode() if v is not None else None) for f, v in zip(fields, row)} for row in rows]

    def analysis_states(self, analysis_ids: list[str]) -> dict[str, tuple[dict[str, str] | None, bool]]:
        """id -> (fields that say how it goes, or None when absent; whether its attempt key is alive)."""
        fields = ("id", "status", "progress", "progress_at", "updated_at", "error", "summary", "runs")
        with self.r.pipeline() as p:
            for aid in analysis_ids:
                p.hmget(analysis_key(aid), *fields)
                p.exists(alive_key(aid))
            rows = p.execute()
        out = {}
        for n, aid in enumerate(analysis_ids):
            values, alive = rows[2 * n], rows[2 * n + 1]
            raw = {f: v.decode() for f, v in zip(fields, values) if v is not None}
            out[aid] = (raw or None, bool(alive))
        return out

    def attempts_started(self) -> int:
        return int(self.r.get(ATTEMPTS_STARTED) or 0)

    # --- attempts (worker side) -------------------------------------------------------

    def start_attempt(self, analysis_id: str, owner: str, worker: str, progress: dict) -> bool:
        """Claim the analysis and mark it running, atomically; False when a live attempt holds it or it is over."""
        return bool(self._lua(
            "start_attempt",
            [analysis_key(analysis_id), alive_key(analysis_id), RUNNING_SET, ATTEMPTS_STARTED, token_key(analysis_id)],
            [owner, ALIVE_TTL_S, repr(time.time()), worker, json.dumps(progress), analysis_id, MAX_LOST_ATTEMPTS,
             lost_attempts_error(analysis_id)]))

    def refresh_attempt(self, analysis_id: str, owner: str) -> bool:
        return bool(self._lua("refresh_holder", [alive_key(analysis_id)], [owner, ALIVE_TTL_S]))

    def add_tensor(self, analysis_id: str, record: dict) -> None:
        self.r.rpush(tensors_key(analysis_id), dumps(record))

    def set_progress(self, analysis_id: str, progress: dict) -> None:
        now = repr(time.time())
        self.r.hset(analysis_key(analysis_id), mapping={
            "progress": json.dumps(progress), "progress_at": now, "updated_at": now})

    def finish_attempt(self, analysis_id: str, status: str, *, result: dict | None = None,
                       error: dict | None = None, keep_partial: bool = False, drop_token: bool = True) -> None:
        """End an attempt in one transaction: status, result or error, and release of the claim."""
        summary = {"summary": dumps(brief_summary(result))} if result is not None else {}
        with self.r.pipeline() as p:
            self._end(p, analysis_key(analysis_id), status, result, error, **summary)
            p.srem(RUNNING_SET, analysis_id)
            if not keep_partial:
                p.delete(tensors_key(analysis_id))
            if drop_token:
                p.delete(token_key(analysis_id))
            p.delete(alive_key(analysis_id))
            p.execute()

    def orphans(self, skip: str | None = None) -> list[str]:
        """Running analyses whose attempt key expired: their worker died mid-way; but the members of
        the set `skip` (the fan-out mixin skips fanned-out analyses, see groups.py)."""
        ids = [i.decode() for i in (self.r.sdiff(RUNNING_SET, skip) if skip else self.r.smembers(RUNNING_SET))]
        if not ids:
            return []
        with self.r.pipeline() as p:
            for i in ids:
                p.exists(alive_key(i))
                p.hget(analysis_key(i), "status")
            flags = p.execute()
        out = []
        for n, i in enumerate(ids):
            alive, status = flags[2 * n], flags[2 * n + 1]
            if status is None or status.decode() != RUNNING:
                self.r.srem(RUNNING_SET, i)
            elif not alive:
                out.append(i)
        return out

    def requeue(self, analysis_id: str) -> bool:
        """Mark an orphaned analysis queued again (keeping its partial records); False if someone else did,
        or if its attempts died MAX_LOST_ATTEMPTS times: then it is failed instead."""
        return bool(self._lua(
            "requeue_attempt",
            [analysis_key(analysis_id), alive_key(analysis_id), RUNNING_SET, token_key(analysis_id)],
            [repr(time.time()), analysis_id, MAX_LOST_ATTEMPTS, lost_attempts_error(analysis_id)]))
