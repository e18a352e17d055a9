"""Redis keys of the product and the (de)serialisation of analyses and overlaps.

Everything lives under the `subnetscope:` prefix, never in RQ's own keys, and
nothing here expires except the short-lived token and liveness keys: a permalink
must keep working long after RQ has forgotten the job (its result TTL is 500 s).

An analysis is one Redis hash; fields that hold structured data are JSON strings
so a read returns them without re-encoding (the result of an 80-layer model is a
few MB, and it is spliced into the response as is).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

PREFIX = "subnetscope"

# A run holds this key while it works; its expiry is how a dead worker is noticed.
ALIVE_TTL_S = 6
ALIVE_REFRESH_S = 1.0

# Statuses as stored. "stalled" is never stored: it is derived on read.
QUEUED, RUNNING, FAILED, DONE = "queued", "running", "failed", "done"

# Runs of one analysis that may die mid-way (worker killed, out of memory, Redis lost) before it
# is failed instead of resumed once more: a checkpoint that kills every worker must not loop forever.
MAX_LOST_RUNS = 3


def lost_runs_error(analysis_id: str) -> str:
    return json.dumps({"code": "worker_lost", "message": (
        f"The worker running this analysis died {MAX_LOST_RUNS} times before finishing it (killed, out of "
        "memory or crashed), so it is not run again automatically; finished tensors are kept, and "
        f"POST /api/analyses/{analysis_id}/retry resumes it.")})


_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'done' or status == 'failed' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if status == 'running' and redis.call('HINCRBY', KEYS[1], 'lost', 1) >= tonumber(ARGV[7]) then
  -- taking over a run that died (its key expired) once too often: fail it instead
  redis.call('DEL', KEYS[2], KEYS[5])
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[8], 'updated_at', ARGV[3])
  redis.call('SREM', KEYS[3], ARGV[6])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[4], 'started_at', ARGV[3],
           'updated_at', ARGV[3], 'progress_at', ARGV[3], 'progress', ARGV[5])
redis.call('HDEL', KEYS[1], 'error')
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('INCR', KEYS[4])
return 1
"""


def connect(url: str) -> redis.Redis:
    # Short connect timeout so the API answers 503 promptly when Redis is down.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=15)


def analysis_key(analysis_id: str) -> str:
    return f"{PREFIX}:analysis:{analysis_id}"


def tensors_key(analysis_id: str) -> str:
    """Finished tensor records of a run in progress, in order: the partial result and the resume state."""
    return f"{PREFIX}:analysis:{analysis_id}:tensors"


def alive_key(analysis_id: str) -> str:
    return f"{PREFIX}:analysis:{analysis_id}:alive"


def token_key(analysis_id: str) -> str:
    return f"{PREFIX}:token:{analysis_id}"


def overlap_key(overlap_id: str) -> str:
    return f"{PREFIX}:overlap:{overlap_id}"


RECENT = f"{PREFIX}:analyses"  # zset id -> created_at
RECENT_OVERLAPS = f"{PREFIX}:overlaps"
RUNNING_SET = f"{PREFIX}:running"  # ids whose status is running, for the janitor
RUNS_STARTED = f"{PREFIX}:stats:analysis_runs_started"  # one per computation actually begun
WORKER_PRESENCE = f"{PREFIX}:worker:"  # + worker name, expiring key refreshed by each worker
JANITOR_LOCK = f"{PREFIX}:janitor"


# Create the record only if absent, or re-arm it when its last run failed; returns
# 1 created, 2 re-armed, 0 already there. One script, so 100 identical concurrent
# submissions make exactly one record and one job.
_CREATE = """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if status and status ~= 'failed' then return 0 end
local created = 1
if status then
  created = 2
  redis.call('HDEL', key, 'error', 'result', 'lost')
  redis.call('HSET', key, 'status', 'queued', 'updated_at', ARGV[2], 'progress', ARGV[4])
else
  redis.call('HSET', key, 'id', ARGV[1], 'status', 'queued', 'created_at', ARGV[2],
             'updated_at', ARGV[2], 'request', ARGV[3], 'progress', ARGV[4], 'runs', 0)
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return created
"""


@dataclass
class Store:
    r: redis.Redis

    # --- analyses ---------------------------------------------------------------------

    def create_analysis(self, analysis_id: str, request: dict, progress: dict) -> int:
        now = repr(time.time())
        return int(
            self.r.eval(
                _CREATE, 2, analysis_key(analysis_id), RECENT,
                analysis_id, now, json.dumps(request), json.dumps(progress),
            )
        )

    def drop_analysis(self, analysis_id: str) -> None:
        """Undo a creation whose job could not be enqueued, so no record lingers as queued."""
        with self.r.pipeline() as p:
            p.delete(analysis_key(analysis_id), tensors_key(analysis_id), token_key(analysis_id))
            p.zrem(RECENT, analysis_id)
            p.execute()

    def get_raw(self, analysis_id: str) -> dict[str, str] | None:
        raw = self.r.hgetall(analysis_key(analysis_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def set_fields(self, analysis_id: str, **fields) -> None:
        fields["updated_at"] = repr(time.time())
        self.r.hset(analysis_key(analysis_id), mapping={k: _enc(v) for k, v in fields.items()})

    def is_alive(self, analysis_id: str) -> bool:
        return bool(self.r.exists(alive_key(analysis_id)))

    def partial(self, analysis_id: str) -> list[str]:
        return [b.decode() for b in self.r.lrange(tensors_key(analysis_id), 0, -1)]

    def recent(self, offset: int, limit: int) -> tuple[int, list[dict[str, str]]]:
        ids = [i.decode() for i in self.r.zrevrange(RECENT, offset, offset + limit - 1)]
        with self.r.pipeline() as p:
            for i in ids:
                p.hmget(analysis_key(i), "id", "status", "created_at", "updated_at", "request", "summary")
            rows = p.execute()
            total = self.r.zcard(RECENT)
        fields = ("id", "status", "created_at", "updated_at", "request", "summary")
        items = []
        for row in rows:
            if row[0] is None:
                continue
            items.append({f: (v.decode() if v is not None else None) for f, v in zip(fields, row)})
        return total, items

    def runs_started(self) -> int:
        return int(self.r.get(RUNS_STARTED) or 0)

    # --- worker side ------------------------------------------------------------------

    def refresh_run(self, analysis_id: str, owner: str) -> bool:
        # Only the holder refreshes; a key lost while frozen is not stolen back.
        return bool(self.r.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('EXPIRE', KEYS[1], ARGV[2]) else return 0 end",
            1, alive_key(analysis_id), owner, ALIVE_TTL_S,
        ))

    def start_run(self, analysis_id: str, owner: str, worker: str, progress: dict) -> bool:
        """Claim the run and mark it running, atomically; False when a live run holds it or it is done."""
        return bool(self.r.eval(
            _START, 5, analysis_key(analysis_id), alive_key(analysis_id), RUNNING_SET, RUNS_STARTED,
            token_key(analysis_id), owner, ALIVE_TTL_S, repr(time.time()), worker, json.dumps(progress),
            analysis_id, MAX_LOST_RUNS, lost_runs_error(analysis_id),
        ))

    def add_tensor(self, analysis_id: str, record: dict) -> None:
        self.r.rpush(tensors_key(analysis_id), dumps(record))

    def set_progress(self, analysis_id: str, progress: dict) -> None:
        now = repr(time.time())
        self.r.hset(analysis_key(analysis_id), mapping={
            "progress": json.dumps(progress), "progress_at": now, "updated_at": now})

    def finish_run(self, analysis_id: str, status: str, *, result: dict | None = None,
                   error: dict | None = None, keep_partial: bool = False, drop_token: bool = True) -> None:
        """End a run in one transaction: status, result or error, and release of the run."""
        now = repr(time.time())
        fields = {"status": status, "updated_at": now, "ended_at": now}
        if result is not None:
            fields["result"] = dumps(result)
            fields["summary"] = dumps(brief_summary(result))
        if error is not None:
            fields["error"] = json.dumps(error)
        with self.r.pipeline() as p:
            p.hset(analysis_key(analysis_id), mapping=fields)
            if status == DONE:
                p.hdel(analysis_key(analysis_id), "error")
            p.srem(RUNNING_SET, analysis_id)
            if not keep_partial:
                p.delete(tensors_key(analysis_id))
            if drop_token:
                p.delete(token_key(analysis_id))
            p.delete(alive_key(analysis_id))
            p.execute()

    def orphans(self) -> list[str]:
        """Running analyses whose run key expired: their worker died mid-way."""
        ids = [i.decode() for i in self.r.smembers(RUNNING_SET)]
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
        """Mark an orphaned run queued again (keeping its partial records); False if someone else did,
        or if its runs died MAX_LOST_RUNS times: then it is failed instead."""
        script = """
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
        redis.call('SREM', KEYS[3], ARGV[2])
        if redis.call('HINCRBY', KEYS[1], 'lost', 1) >= tonumber(ARGV[3]) then
          redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[4], 'updated_at', ARGV[1])
          redis.call('DEL', KEYS[4])
          return 0
        end
        redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1])
        return 1
        """
        return bool(self.r.eval(script, 4, analysis_key(analysis_id), alive_key(analysis_id), RUNNING_SET,
                                token_key(analysis_id), repr(time.time()), analysis_id, MAX_LOST_RUNS,
                                lost_runs_error(analysis_id)))

    # --- tokens -----------------------------------------------------------------------

    def put_token(self, analysis_id: str, token: str, ttl: int) -> None:
        self.r.set(token_key(analysis_id), token, ex=ttl)

    def get_token(self, analysis_id: str) -> str | None:
        raw = self.r.get(token_key(analysis_id))
        return raw.decode() if raw else None

    # --- workers ----------------------------------------------------------------------

    def announce_worker(self, name: str, ttl: int) -> None:
        self.r.set(WORKER_PRESENCE + name, repr(time.time()), ex=ttl)

    def retire_worker(self, name: str) -> None:
        self.r.delete(WORKER_PRESENCE + name)

    def live_workers(self) -> int:
        return sum(1 for _ in self.r.scan_iter(match=WORKER_PRESENCE + "*", count=100))

    # --- overlaps ---------------------------------------------------------------------

    def create_overlap(self, overlap_id: str, analyses: Iterable[str]) -> int:
        now = repr(time.time())
        return int(
            self.r.eval(
                _CREATE, 2, overlap_key(overlap_id), RECENT_OVERLAPS,
                overlap_id, now, json.dumps({"analyses": list(analyses)}), "null",
            )
        )

    def get_overlap_raw(self, overlap_id: str) -> dict[str, str] | None:
        raw = self.r.hgetall(overlap_key(overlap_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def drop_overlap(self, overlap_id: str) -> None:
        with self.r.pipeline() as p:
            p.delete(overlap_key(overlap_id))
            p.zrem(RECENT_OVERLAPS, overlap_id)
            p.execute()

    def finish_overlap(self, overlap_id: str, status: str, *, result: dict | None = None,
                       error: dict | None = None) -> None:
        fields = {"status": status, "updated_at": repr(time.time())}
        if result is not None:
            fields["result"] = dumps(result)
        if error is not None:
            fields["error"] = json.dumps(error)
        self.r.hset(overlap_key(overlap_id), mapping=fields)


def brief_summary(result: dict) -> dict:
    """What the recent-analyses list shows, without the whole result."""
    summary = result.get("summary") or {}
    tol = repr(float((result.get("options") or {}).get("tolerance", 1e-5)))
    return {
        "base": result.get("base"),
        "tuned": result.get("tuned"),
        "tolerance": tol,
        "sparsity": (summary.get("sparsity") or {}).get(tol),
        "numel": summary.get("numel"),
        "tensors": summary.get("tensors"),
    }


def _enc(v) -> str:
    return v if isinstance(v, str) else dumps(v)


def dumps(obj) -> str:
    """JSON as every client can parse it: NaN and infinities (not JSON) become null."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
