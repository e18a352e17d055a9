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

from worker.engine.tolerance import tolerance_key

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


# Training runs (POST /api/runs): a group of analyses plus a reduce of their masks. Named
# "training run" in keys and methods: an analysis's own "run" is one attempt at computing it.
def training_run_key(run_id: str) -> str:
    return f"{PREFIX}:training_run:{run_id}"


def training_run_alive_key(run_id: str) -> str:
    """Held (expiring) by the worker reducing the run: how a dead reducer is noticed."""
    return f"{PREFIX}:training_run:{run_id}:alive"


def waiting_runs_key(analysis_id: str) -> str:
    """Training runs that wait for this analysis (set of run ids)."""
    return f"{PREFIX}:analysis:{analysis_id}:training_runs"


RECENT_TRAINING_RUNS = f"{PREFIX}:training_runs"  # zset id -> created_at
PENDING_TRAINING_RUNS = f"{PREFIX}:training_runs:pending"  # runs whose reduce has not finished


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


_QUEUE_REDUCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'reducing', 'reduce_queued_at', ARGV[1], 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'reduce_started_at')
return 1
"""

_START_REDUCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'reducing' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'reduce_started_at', ARGV[3], 'updated_at', ARGV[3])
return 1
"""

# A reduce whose worker died: queued again, or failed after MAX_LOST_RUNS deaths.
_REQUEUE_REDUCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'reducing' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HINCRBY', KEYS[1], 'reduce_lost', 1) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[3], 'updated_at', ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'reduce_started_at', 'reduce_queued_at')
return 1
"""


class TrainingRuns:
    """Store methods of training runs (mixed into Store)."""

    r: redis.Redis

    def create_training_run(self, run_id: str, request: dict) -> int:
        """1 created, 2 re-armed (its reduce had failed), 0 already there."""
        created = int(self.r.eval(_CREATE, 2, training_run_key(run_id), RECENT_TRAINING_RUNS,
                                  run_id, repr(time.time()), json.dumps(request), "null"))
        if created == 2:
            self.r.hdel(training_run_key(run_id), "reduce_lost", "reduce_started_at", "reduce_queued_at")
        return created

    def get_training_run(self, run_id: str) -> dict[str, str] | None:
        raw = self.r.hgetall(training_run_key(run_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def recent_training_runs(self, offset: int, limit: int) -> tuple[int, list[dict[str, str]]]:
        """Newest first: (total, records without their result, which can be large)."""
        ids = [i.decode() for i in self.r.zrevrange(RECENT_TRAINING_RUNS, offset, offset + limit - 1)]
        fields = ("id", "status", "created_at", "updated_at", "request", "error")
        with self.r.pipeline() as p:
            for i in ids:
                p.hmget(training_run_key(i), *fields)
            rows = p.execute()
            total = self.r.zcard(RECENT_TRAINING_RUNS)
        items = [{f: v.decode() for f, v in zip(fields, row) if v is not None} for row in rows if row[0] is not None]
        return total, items

    def drop_training_run(self, run_id: str) -> None:
        with self.r.pipeline() as p:
            p.delete(training_run_key(run_id))
            p.zrem(RECENT_TRAINING_RUNS, run_id)
            p.srem(PENDING_TRAINING_RUNS, run_id)
            p.execute()

    def watch_analyses(self, run_id: str, analysis_ids: Iterable[str]) -> None:
        """The run waits for these analyses: each one's end checks whether the run can be reduced."""
        with self.r.pipeline() as p:
            for aid in analysis_ids:
                p.sadd(waiting_runs_key(aid), run_id)
            p.sadd(PENDING_TRAINING_RUNS, run_id)
            p.execute()

    def runs_waiting_on(self, analysis_id: str) -> list[str]:
        return [i.decode() for i in self.r.smembers(waiting_runs_key(analysis_id))]

    def pending_training_runs(self) -> list[str]:
        return [i.decode() for i in self.r.smembers(PENDING_TRAINING_RUNS)]

    def analysis_states(self, analysis_ids: list[str]) -> dict[str, tuple[dict[str, str] | None, bool]]:
        """id -> (fields that say how it goes, or None when absent; whether its run key is alive)."""
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

    def queue_reduce(self, run_id: str) -> bool:
        """queued -> reducing, once: True for the one caller that must enqueue the reduce job."""
        return bool(self.r.eval(_QUEUE_REDUCE, 1, training_run_key(run_id), repr(time.time())))

    def start_reduce(self, run_id: str, owner: str) -> bool:
        return bool(self.r.eval(_START_REDUCE, 2, training_run_key(run_id), training_run_alive_key(run_id),
                                owner, ALIVE_TTL_S, repr(time.time())))

    def refresh_reduce(self, run_id: str, owner: str) -> bool:
        return bool(self.r.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('EXPIRE', KEYS[1], ARGV[2]) else return 0 end",
            1, training_run_alive_key(run_id), owner, ALIVE_TTL_S))

    def reducer_alive(self, run_id: str) -> bool:
        return bool(self.r.exists(training_run_alive_key(run_id)))

    def requeue_reduce(self, run_id: str, error: str) -> bool:
        return bool(self.r.eval(_REQUEUE_REDUCE, 3, training_run_key(run_id), training_run_alive_key(run_id),
                                PENDING_TRAINING_RUNS, repr(time.time()), MAX_LOST_RUNS, error, run_id))

    def finish_reduce(self, run_id: str, status: str, *, result: dict | None = None,
                      error: dict | None = None) -> None:
        now = repr(time.time())
        fields = {"status": status, "updated_at": now, "ended_at": now}
        if result is not None:
            fields["result"] = dumps(result)
        if error is not None:
            fields["error"] = json.dumps(error)
        with self.r.pipeline() as p:
            p.hset(training_run_key(run_id), mapping=fields)
            if status == DONE:
                p.hdel(training_run_key(run_id), "error")
            p.srem(PENDING_TRAINING_RUNS, run_id)
            p.delete(training_run_alive_key(run_id))
            p.execute()

    def rearm_training_run(self, run_id: str) -> bool:
        """A failed run's reduce may run again (after a retry): failed -> queued."""
        script = """
        if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
        redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1])
        redis.call('HDEL', KEYS[1], 'error', 'reduce_lost', 'reduce_started_at', 'reduce_queued_at')
        redis.call('SADD', KEYS[2], ARGV[2])
        return 1
        """
        return bool(self.r.eval(script, 2, training_run_key(run_id), PENDING_TRAINING_RUNS,
                                repr(time.time()), run_id))


# Fan-out (worker/fanout.py): one analysis split into tensor groups, one RQ job each, and a reduce.
def groups_key(analysis_id: str) -> str:
    """The analysis's split (JSON list of {"names": [...], "bytes": n}), fixed once written."""
    return f"{PREFIX}:analysis:{analysis_id}:groups"


def group_key(analysis_id: str, k: int) -> str:
    """One group's state: status queued|running|done, runs, lost, worker, progress, bytes_read."""
    return f"{PREFIX}:analysis:{analysis_id}:group:{k}"


def group_alive_key(analysis_id: str, k: int) -> str:
    return f"{PREFIX}:analysis:{analysis_id}:group:{k}:alive"


def groups_done_key(analysis_id: str) -> str:
    return f"{PREFIX}:analysis:{analysis_id}:groups_done"  # set of group indices


def reduce_alive_key(analysis_id: str) -> str:
    return f"{PREFIX}:analysis:{analysis_id}:reduce:alive"


FANOUTS = f"{PREFIX}:fanouts"  # analyses whose groups are out: the janitor watches them

GROUP_PROGRESS_FIELDS = ("status", "tensors_done", "tensors_total", "bytes_done", "bytes_total", "bytes_per_s",
                         "current")

# A group run claims its group: the analysis must be running (fanned out), the group not done, and
# no live run may hold it. Taking over a run that died counts a loss; MAX_LOST_RUNS of them: -1.
_START_GROUP = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('SISMEMBER', KEYS[4], ARGV[5]) == 1 then return 0 end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[2], 'status') == 'running' and redis.call('HINCRBY', KEYS[2], 'lost', 1) >= tonumber(ARGV[6]) then
  redis.call('DEL', KEYS[3])
  return -1
end
redis.call('HSET', KEYS[2], 'status', 'running', 'worker', ARGV[4], 'started_at', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'runs', 1)
redis.call('INCR', KEYS[5])
return 1
"""

# The holder keeps its group claim and the analysis's liveness; 0 once the analysis is no longer
# running (failed, retried) or another run holds the group: the run stops.
_REFRESH_GROUP = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], 'fanout', 'EX', ARGV[2])
return 1
"""

# A group is done; 1 for the one call that completes the set and must enqueue the reduce.
_FINISH_GROUP = """
redis.call('HSET', KEYS[2], 'status', 'done', 'bytes_read', ARGV[3], 'ended_at', ARGV[2],
           'tensors_done', ARGV[5], 'bytes_done', ARGV[6], 'bytes_per_s', '')
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
redis.call('SADD', KEYS[4], ARGV[1])
if redis.call('SCARD', KEYS[4]) < tonumber(ARGV[7]) then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reduce') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'reduce', 'queued', 'reduce_queued_at', ARGV[2])
return 1
"""

# The janitor: a group whose run died goes back to queued (1), or fails the analysis (-1).
_REQUEUE_GROUP = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HINCRBY', KEYS[2], 'lost', 1) >= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[2], 'status', 'queued')
return 1
"""

# The reduce is claimed from `queued` only; the janitor puts a dead one back (_REQUEUE_FANOUT_REDUCE).
_START_FANOUT_REDUCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'reduce') ~= 'queued' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'reduce', 'running', 'reduce_started_at', ARGV[3])
redis.call('SET', KEYS[3], 'fanout', 'EX', ARGV[2])
return 1
"""

_REFRESH_FANOUT_REDUCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], 'fanout', 'EX', ARGV[2])
redis.call('HSET', KEYS[1], 'progress_at', ARGV[3])
return 1
"""

# A reduce whose worker died (1: queued again; -1: it died MAX_LOST_RUNS times), or one queued
# long ago that never started (its job may be lost): queued again.
_REQUEUE_FANOUT_REDUCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local reduce = redis.call('HGET', KEYS[1], 'reduce')
if reduce == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
  if redis.call('HINCRBY', KEYS[1], 'reduce_lost', 1) >= tonumber(ARGV[3]) then return -1 end
elseif reduce == 'queued' then
  if tonumber(redis.call('HGET', KEYS[1], 'reduce_queued_at') or '0') > tonumber(ARGV[2]) then return 0 end
else
  return 0
end
redis.call('HSET', KEYS[1], 'reduce', 'queued', 'reduce_queued_at', ARGV[1])
return 1
"""


class FanOut:
    """Store methods of fanned-out analyses (mixed into Store). The analysis hash keeps its usual
    fields (status stays `running` from the dispatch to the end of the reduce) plus `fanout`
    ({"groups": n, "bytes": [...]}; with "runs" per group once done) and, once every group is done,
    `reduce` (queued|running), `reduce_queued_at`, `reduce_started_at`, `reduce_lost`."""

    r: redis.Redis

    def get_groups(self, analysis_id: str) -> list[dict] | None:
        raw = self.r.get(groups_key(analysis_id))
        return json.loads(raw) if raw else None

    def set_groups(self, analysis_id: str, groups: list[dict]) -> list[dict]:
        """Record the split once; a split already recorded wins (and is returned)."""
        self.r.set(groups_key(analysis_id), json.dumps(groups), nx=True)
        return self.get_groups(analysis_id) or groups

    def dispatch_groups(self, analysis_id: str, groups: list[dict]) -> list[int]:
        """(Re)arm every group that is neither done nor held by a live run: queued, its losses
        forgotten, its progress at zero. The analysis joins FANOUTS. Returns the groups to enqueue."""
        n = len(groups)
        with self.r.pipeline() as p:
            p.smembers(groups_done_key(analysis_id))
            for k in range(n):
                p.exists(group_alive_key(analysis_id, k))
            rows = p.execute()
        done = {int(x) for x in rows[0]}
        alive = rows[1:]
        todo = [k for k in range(n) if k not in done and not alive[k]]
        with self.r.pipeline() as p:
            for k in todo:
                p.hset(group_key(analysis_id, k), mapping={
                    "status": "queued", "lost": 0, "tensors_done": 0, "bytes_done": 0, "bytes_per_s": "",
                    "tensors_total": len(groups[k]["names"]), "bytes_total": groups[k]["bytes"], "current": ""})
                p.hdel(group_key(analysis_id, k), "error")
            p.hset(analysis_key(analysis_id), "fanout", json.dumps({"groups": n, "bytes": [g["bytes"] for g in groups]}))
            # A dispatch starts the reduce afresh: none runs (its liveness would have kept the analysis alive).
            p.hdel(analysis_key(analysis_id), "reduce", "reduce_lost", "reduce_queued_at", "reduce_started_at",
                   "reopened")
            p.sadd(FANOUTS, analysis_id)
            p.execute()
        return todo

    def fanouts(self) -> list[str]:
        return [i.decode() for i in self.r.smembers(FANOUTS)]

    def is_fanout(self, analysis_id: str) -> bool:
        return bool(self.r.sismember(FANOUTS, analysis_id))

    def start_group(self, analysis_id: str, k: int, owner: str, worker: str) -> int:
        """1 claimed; 0 not (done, held, or the analysis is not running); -1 its runs died MAX_LOST_RUNS times."""
        return int(self.r.eval(_START_GROUP, 5, analysis_key(analysis_id), group_key(analysis_id, k),
                               group_alive_key(analysis_id, k), groups_done_key(analysis_id), RUNS_STARTED,
                               owner, ALIVE_TTL_S, repr(time.time()), worker, k, MAX_LOST_RUNS))

    def refresh_group(self, analysis_id: str, k: int, owner: str) -> bool:
        return bool(self.r.eval(_REFRESH_GROUP, 3, analysis_key(analysis_id), group_alive_key(analysis_id, k),
                                alive_key(analysis_id), owner, ALIVE_TTL_S))

    def release_group(self, analysis_id: str, k: int, owner: str) -> None:
        """A run that stops without finishing (a transient error RQ retries): the group is queued again."""
        self.r.eval("if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) "
                    "redis.call('HSET', KEYS[1], 'status', 'queued') end return 1",
                    2, group_key(analysis_id, k), group_alive_key(analysis_id, k), owner)

    def set_group_job(self, analysis_id: str, k: int, job_id: str) -> None:
        """The RQ job that runs group k (the janitor checks it still exists while the group is queued)."""
        self.r.hset(group_key(analysis_id, k), mapping={"job": job_id, "job_at": repr(time.time())})

    def group_jobs(self, analysis_id: str, ks: Iterable[int]) -> dict[int, tuple[str | None, float]]:
        """k -> (its last RQ job id or None, when that was enqueued, 0 when never)."""
        ks = list(ks)
        with self.r.pipeline() as p:
            for k in ks:
                p.hmget(group_key(analysis_id, k), "job", "job_at")
            rows = p.execute()
        return {k: (job.decode() if job else None, float(at) if at else 0.0) for k, (job, at) in zip(ks, rows)}

    def finish_group(self, analysis_id: str, k: int, owner: str, n_groups: int, bytes_read: int,
                     tensors: int, nbytes: int) -> bool:
        """Mark group k done; True for the one caller that must enqueue the reduce."""
        return bool(self.r.eval(_FINISH_GROUP, 4, analysis_key(analysis_id), group_key(analysis_id, k),
                                group_alive_key(analysis_id, k), groups_done_key(analysis_id),
                                k, repr(time.time()), bytes_read, owner, tensors, nbytes, n_groups))

    def requeue_group(self, analysis_id: str, k: int) -> int:
        """A running group whose run key expired: 1 queued again, -1 it died MAX_LOST_RUNS times, 0 nothing."""
        return int(self.r.eval(_REQUEUE_GROUP, 3, analysis_key(analysis_id), group_key(analysis_id, k),
                               group_alive_key(analysis_id, k), MAX_LOST_RUNS))

    def reopen_groups(self, analysis_id: str, ks: Iterable[int]) -> None:
        """Groups whose output the reduce could not find: not done any more, queued again."""
        with self.r.pipeline() as p:
            for k in ks:
                p.srem(groups_done_key(analysis_id), k)
                p.hset(group_key(analysis_id, k), mapping={"status": "queued", "tensors_done": 0, "bytes_done": 0})
            p.hdel(analysis_key(analysis_id), "reduce", "reduce_queued_at", "reduce_started_at")
            p.delete(reduce_alive_key(analysis_id))  # the reduce that reopened them stops here
            p.hincrby(analysis_key(analysis_id), "reopened", 1)
            p.execute()

    def group_states(self, analysis_id: str, n: int) -> list[dict]:
        """Per group: its progress fields (decoded), `runs`, `lost`, `bytes_read`, `worker` and `alive`."""
        fields = (*GROUP_PROGRESS_FIELDS, "runs", "lost", "bytes_read", "worker")
        with self.r.pipeline() as p:
            for k in range(n):
                p.hmget(group_key(analysis_id, k), *fields)
                p.exists(group_alive_key(analysis_id, k))
            rows = p.execute()
        out = []
        for k in range(n):
            values, alive = rows[2 * k], rows[2 * k + 1]
            state = {f: (v.decode() if v is not None else None) for f, v in zip(fields, values)}
            state["alive"] = bool(alive)
            out.append(state)
        return out

    def set_group_progress(self, analysis_id: str, k: int, n: int, progress: dict) -> dict:
        """Store group k's progress and return the analysis's, summed over its groups (stored too)."""
        self.r.hset(group_key(analysis_id, k), mapping={f: ("" if v is None else v) for f, v in progress.items()})
        return self.sum_group_progress(analysis_id, n)

    def sum_group_progress(self, analysis_id: str, n: int, *, current: str | None = None) -> dict:
        states = self.group_states(analysis_id, n)

        def num(v) -> float:
            return float(v) if v not in (None, "") else 0.0

        running = [s for s in states if s["status"] == "running"]
        total = {key: int(sum(num(s[key]) for s in states))
                 for key in ("tensors_done", "tensors_total", "bytes_done", "bytes_total")}
        rate = sum(num(s["bytes_per_s"]) for s in running)
        remaining = max(total["bytes_total"] - total["bytes_done"], 0)
        progress = {
            **total,
            "bytes_per_s": round(rate, 1) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate else None,
            "current": current if current is not None else next((s["current"] for s in running if s["current"]), None),
            "groups": {"total": n, "done": sum(s["status"] == "done" for s in states), "running": len(running)},
        }
        self.set_progress(analysis_id, progress)
        return progress

    def start_fanout_reduce(self, analysis_id: str, owner: str) -> bool:
        """Claim the queued reduce; False when it is not queued (not ready, done, or held)."""
        return bool(self.r.eval(_START_FANOUT_REDUCE, 3, analysis_key(analysis_id), reduce_alive_key(analysis_id),
                                alive_key(analysis_id), owner, ALIVE_TTL_S, repr(time.time())))

    def refresh_fanout_reduce(self, analysis_id: str, owner: str) -> bool:
        return bool(self.r.eval(_REFRESH_FANOUT_REDUCE, 3, analysis_key(analysis_id), reduce_alive_key(analysis_id),
                                alive_key(analysis_id), owner, ALIVE_TTL_S, repr(time.time())))

    def requeue_fanout_reduce(self, analysis_id: str, stale_before: float) -> int:
        """1: the reduce must be enqueued again (its worker died, or it was queued before
        `stale_before` and never started); -1: it died MAX_LOST_RUNS times; 0: nothing to do."""
        return int(self.r.eval(_REQUEUE_FANOUT_REDUCE, 2, analysis_key(analysis_id), reduce_alive_key(analysis_id),
                               repr(time.time()), repr(stale_before), MAX_LOST_RUNS))

    def queue_fanout_reduce(self, analysis_id: str) -> bool:
        """The janitor's safety net: all groups done and no reduce recorded: queued, once."""
        return bool(self.r.eval(
            "if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end "
            "if redis.call('HEXISTS', KEYS[1], 'reduce') == 1 then return 0 end "
            "redis.call('HSET', KEYS[1], 'reduce', 'queued', 'reduce_queued_at', ARGV[1]) return 1",
            1, analysis_key(analysis_id), repr(time.time())))

    def keep_fanout_alive(self, analysis_id: str, *, touch_progress: bool) -> None:
        """The janitor vouches for an analysis whose groups are supervised (queued ones included)."""
        with self.r.pipeline() as p:
            p.set(alive_key(analysis_id), "fanout", ex=ALIVE_TTL_S)
            if touch_progress:
                p.hset(analysis_key(analysis_id), "progress_at", repr(time.time()))
            p.execute()

    def leave_fanout(self, analysis_id: str) -> None:
        """The analysis failed: the janitor stops watching it; its split and groups stay for a retry."""
        self.r.srem(FANOUTS, analysis_id)

    def end_fanout(self, analysis_id: str, n: int) -> None:
        """The analysis is done: its split, groups and keys go (the `fanout` field keeps the runs per group)."""
        with self.r.pipeline() as p:
            p.delete(groups_key(analysis_id), groups_done_key(analysis_id), reduce_alive_key(analysis_id),
                     *(group_key(analysis_id, k) for k in range(n)),
                     *(group_alive_key(analysis_id, k) for k in range(n)))
            p.srem(FANOUTS, analysis_id)
            p.execute()


@dataclass
class Store(TrainingRuns, FanOut):
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
        """Running analyses whose run key expired: their worker died mid-way. Fanned-out analyses
        are left to the fan-out sweep (worker/fanout.py), which requeues their dead groups instead."""
        ids = [i.decode() for i in self.r.sdiff(RUNNING_SET, FANOUTS)]
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
    tol = tolerance_key((result.get("options") or {}).get("tolerance", 1e-5))
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
