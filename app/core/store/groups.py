"""Fan-out (worker/fanout.py): one analysis split into tensor groups, one RQ job each, and a reduce.

Each group has its own state hash and liveness key; the analysis's hash keeps its usual fields
(status stays `running` from the dispatch to the end of the reduce) plus `fanout`
({"groups": n, "bytes": [...]}; with "runs" (attempts) per group once done) and, once every group is
done, `reduce` (queued|running), `reduce_queued_at`, `reduce_started_at`, `reduce_lost`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from app.core.store.analyses import ATTEMPTS_STARTED, Analyses, alive_key, analysis_key
from app.core.store.base import ALIVE_TTL_S, MAX_LOST_ATTEMPTS, PREFIX

FANOUTS = f"{PREFIX}:fanouts"  # analyses whose groups are out: the janitor watches them

GROUP_PROGRESS_FIELDS = ("status", "tensors_done", "tensors_total", "bytes_done", "bytes_total", "bytes_per_s",
                         "current")


# The analysis's split (JSON list of {"names": [...], "bytes": n}), fixed once written.
groups_key = analysis_key.beside("groups")
groups_done_key = analysis_key.beside("groups_done")  # set of group indices
reduce_alive_key = analysis_key.beside("reduce", "alive")


def group_key(analysis_id: str, k: int) -> str:
    """One group's state: status queued|running|done, runs, lost, worker, progress, bytes_read."""
    return analysis_key(analysis_id, "group", k)


def group_alive_key(analysis_id: str, k: int) -> str:
    return analysis_key(analysis_id, "group", k, "alive")


class FanOutGroups(Analyses):
    """Store methods of fanned-out analyses (see the module docstring)."""

    def orphans(self, skip: str | None = None) -> list[str]:
        """Fanned-out analyses are left to the fan-out sweep (worker/fanout.py), which requeues their
        dead groups instead."""
        return super().orphans(skip=skip or FANOUTS)

    def _reduce_keys(self, analysis_id: str) -> list[str]:
        return [analysis_key(analysis_id), reduce_alive_key(analysis_id), alive_key(analysis_id)]

    def get_groups(self, analysis_id: str) -> list[dict] | None:
        raw = self.r.get(groups_key(analysis_id))
        return json.loads(raw) if raw else None

    def set_groups(self, analysis_id: str, groups: list[dict]) -> list[dict]:
        """Record the split once; a split already recorded wins (and is returned)."""
        self.r.set(groups_key(analysis_id), json.dumps(groups), nx=True)
        return self.get_groups(analysis_id) or groups

    def dispatch_groups(self, analysis_id: str, groups: list[dict]) -> list[int]:
        """(Re)arm every group that is neither done nor held by a live attempt: queued, its losses
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
        """1 claimed; 0 not (done, held, or the analysis is not running); -1 its runs died MAX_LOST_ATTEMPTS times."""
        return int(self._lua("start_group", [analysis_key(analysis_id), group_key(analysis_id, k),
                                             group_alive_key(analysis_id, k), groups_done_key(analysis_id),
                                             ATTEMPTS_STARTED],
                             [owner, ALIVE_TTL_S, repr(time.time()), worker, k, MAX_LOST_ATTEMPTS]))

    def refresh_group(self, analysis_id: str, k: int, owner: str) -> bool:
        return bool(self._lua("refresh_group", [analysis_key(analysis_id), group_alive_key(analysis_id, k),
                                                alive_key(analysis_id)], [owner, ALIVE_TTL_S]))

    def release_group(self, analysis_id: str, k: int, owner: str) -> None:
        """A attempt that stops without finishing (a transient error RQ retries): the group is queued again."""
        self._lua("release_group", [group_key(analysis_id, k), group_alive_key(analysis_id, k)], [owner])

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
        return bool(self._lua("finish_group", [analysis_key(analysis_id), group_key(analysis_id, k),
                                               group_alive_key(analysis_id, k), groups_done_key(analysis_id)],
                              [k, repr(time.time()), bytes_read, owner, tensors, nbytes, n_groups]))

    def requeue_group(self, analysis_id: str, k: int) -> int:
        """A running group whose attempt key expired: 1 queued again, -1 it died MAX_LOST_ATTEMPTS times, 0 nothing."""
        return int(self._lua("requeue_group", [analysis_key(analysis_id), group_key(analysis_id, k),
                                               group_alive_key(analysis_id, k)], [MAX_LOST_ATTEMPTS]))

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
        return bool(self._lua("start_fanout_reduce", self._reduce_keys(analysis_id),
                              [owner, ALIVE_TTL_S, repr(time.time())]))

    def refresh_fanout_reduce(self, analysis_id: str, owner: str) -> bool:
        return bool(self._lua("refresh_fanout_reduce", self._reduce_keys(analysis_id),
                              [owner, ALIVE_TTL_S, repr(time.time())]))

    def requeue_fanout_reduce(self, analysis_id: str, stale_before: float) -> int:
        """1: the reduce must be enqueued again (its worker died, or it was queued before
        `stale_before` and never started); -1: it died MAX_LOST_ATTEMPTS times; 0: nothing to do."""
        return int(self._lua("requeue_fanout_reduce", [analysis_key(analysis_id), reduce_alive_key(analysis_id)],
                             [repr(time.time()), repr(stale_before), MAX_LOST_ATTEMPTS]))

    def queue_fanout_reduce(self, analysis_id: str) -> bool:
        """The janitor's safety net: all groups done and no reduce recorded: queued, once."""
        return bool(self._lua("queue_fanout_reduce", [analysis_key(analysis_id)], [repr(time.time())]))

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
