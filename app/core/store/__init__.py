"""The product's Redis keys, one module per noun, each owning its key templates (as rq's job and
registry do); `Store` is the one facade callers use.

- base.py: prefix, liveness timings, statuses, MAX_LOST_ATTEMPTS, connect, JSON, the Lua scripts
  (lua/*.lua, registered once per connection);
- analyses.py: analysis records and their attempts (one go at computing an analysis);
- groups.py: fanned-out analyses: tensor groups and their reduce;
- training_runs.py: training runs (a group of analyses plus a reduce of their masks);
- overlaps.py, tokens.py (users' sealed Hub tokens), workers.py (presence, the janitor lock).

Everything lives under the `subnetscope:` prefix, never in RQ's own keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from app.core.store.analyses import (
    ATTEMPTS_STARTED,
    RECENT,
    RUNNING_SET,
    alive_key,
    analysis_key,
    brief_summary,
    lost_attempts_error,
    tensors_key,
)
from app.core.store.base import (
    ALIVE_REFRESH_S,
    ALIVE_TTL_S,
    DONE,
    FAILED,
    MAX_LOST_ATTEMPTS,
    PREFIX,
    QUEUED,
    RUNNING,
    connect,
    dumps,
)
from app.core.store.groups import (
    FANOUTS,
    GROUP_PROGRESS_FIELDS,
    FanOutGroups,
    group_alive_key,
    group_key,
    groups_done_key,
    groups_key,
    reduce_alive_key,
)
from app.core.store.overlaps import RECENT_OVERLAPS, Overlaps, overlap_key
from app.core.store.tokens import Tokens, token_key
from app.core.store.training_runs import (
    PENDING_TRAINING_RUNS,
    RECENT_TRAINING_RUNS,
    TrainingRuns,
    training_run_alive_key,
    training_run_key,
    waiting_runs_key,
)
from app.core.store.workers import JANITOR_LOCK, WORKER_PRESENCE, Workers


@dataclass
class Store(FanOutGroups, TrainingRuns, Overlaps, Tokens, Workers):
    r: redis.Redis


__all__ = [
    "ALIVE_REFRESH_S", "ALIVE_TTL_S", "ATTEMPTS_STARTED", "DONE", "FAILED", "FANOUTS", "GROUP_PROGRESS_FIELDS",
    "JANITOR_LOCK", "MAX_LOST_ATTEMPTS", "PENDING_TRAINING_RUNS", "PREFIX", "QUEUED", "RECENT", "RECENT_OVERLAPS",
    "RECENT_TRAINING_RUNS", "RUNNING", "RUNNING_SET", "WORKER_PRESENCE", "Store", "alive_key", "analysis_key",
    "brief_summary", "connect", "dumps", "group_alive_key", "group_key", "groups_done_key", "groups_key",
    "lost_attempts_error", "overlap_key", "reduce_alive_key", "tensors_key", "token_key", "training_run_alive_key",
    "training_run_key", "waiting_runs_key",
]
