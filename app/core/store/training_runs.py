"""Training runs (POST /api/runs): a group of analyses plus a reduce of their masks.

Named "training run" in keys and methods; one go at computing an analysis is an *attempt*."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from app.core.store.analyses import analysis_key
from app.core.store.base import ALIVE_TTL_S, MAX_LOST_ATTEMPTS, PREFIX, Keyed, KeyTemplate

RECENT_TRAINING_RUNS = f"{PREFIX}:training_runs"  # zset id -> created_at
PENDING_TRAINING_RUNS = f"{PREFIX}:training_runs:pending"  # runs whose reduce has not finished


training_run_key = KeyTemplate("training_run")  # the record: one hash
training_run_alive_key = training_run_key.beside("alive")  # held (expiring) by the worker reducing the run
waiting_runs_key = analysis_key.beside("training_runs")  # per analysis: the runs waiting for it (set of ids)


class TrainingRuns(Keyed):
    def create_training_run(self, run_id: str, request: dict) -> int:
        """1 created, 2 re-armed (its reduce had failed), 0 already there."""
        created = int(self._lua("create_record", [training_run_key(run_id), RECENT_TRAINING_RUNS],
                                [run_id, repr(time.time()), json.dumps(request), "null"]))
        if created == 2:
            self.r.hdel(training_run_key(run_id), "reduce_lost", "reduce_started_at", "reduce_queued_at")
        return created

    def get_training_run(self, run_id: str) -> dict[str, str] | None:
        return self._hash(training_run_key(run_id))

    def recent_training_runs(self, offset: int, limit: int) -> tuple[int, list[dict[str, str]]]:
        """Newest first: (total, records without their result, which can be large)."""
        fields = ("id", "status", "created_at", "updated_at", "request", "error")
        total, rows = self._newest(RECENT_TRAINING_RUNS, training_run_key, fields, offset, limit)
        return total, [{f: v.decode() for f, v in zip(fields, row) if v is not None} for row in rows]

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

    def forget_pending(self, run_id: str) -> None:
        """A run found over (done or failed) leaves the pending set."""
        self.r.srem(PENDING_TRAINING_RUNS, run_id)

    def queue_reduce(self, run_id: str) -> bool:
        """queued -> reducing, once: True for the one caller that must enqueue the reduce job."""
        return bool(self._lua("queue_reduce", [training_run_key(run_id)], [repr(time.time())]))

    def start_reduce(self, run_id: str, owner: str) -> bool:
        return bool(self._lua("start_reduce", [training_run_key(run_id), training_run_alive_key(run_id)],
                              [owner, ALIVE_TTL_S, repr(time.time())]))

    def refresh_reduce(self, run_id: str, owner: str) -> bool:
        return bool(self._lua("refresh_holder", [training_run_alive_key(run_id)], [owner, ALIVE_TTL_S]))

    def reducer_alive(self, run_id: str) -> bool:
        return bool(self.r.exists(training_run_alive_key(run_id)))

    def requeue_reduce(self, run_id: str, error: str) -> bool:
        return bool(self._lua("requeue_reduce",
                              [training_run_key(run_id), training_run_alive_key(run_id), PENDING_TRAINING_RUNS],
                              [repr(time.time()), MAX_LOST_ATTEMPTS, error, run_id]))

    def finish_reduce(self, run_id: str, status: str, *, result: dict | None = None,
                      error: dict | None = None) -> None:
        with self.r.pipeline() as p:
            self._end(p, training_run_key(run_id), status, result, error)
            p.srem(PENDING_TRAINING_RUNS, run_id)
            p.delete(training_run_alive_key(run_id))
            p.execute()

    def rearm_training_run(self, run_id: str) -> bool:
        """A failed run's reduce may run again (after a retry): failed -> queued."""
        return bool(self._lua("rearm_training_run", [training_run_key(run_id), PENDING_TRAINING_RUNS],
                              [repr(time.time()), run_id]))
