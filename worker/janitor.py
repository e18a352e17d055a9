"""The janitor: a thread in every `subnetscope worker` process (worker/process.py).

It announces its worker (the health endpoint counts live workers from these expiring keys, which
vanish within seconds of a SIGKILL, unlike RQ's own registrations) and, one janitor at a time,
puts back on the queue any analysis whose attempt stopped heartbeating, so work cut short by a
dead worker resumes on a live one; for an analysis fanned out over workers (worker/fanout.py),
only the groups whose attempt died; and the training runs whose reduce is due or lost.
"""

from __future__ import annotations

import logging
import threading

from app.core.queues import enqueue_analysis
from app.core.settings import Settings
from app.core.store import Store, connect
from app.core.training_runs import sweep as sweep_training_runs
from worker.fanout import sweep as sweep_fanouts

log = logging.getLogger(__name__)

PRESENCE_TTL_S = 10
JANITOR_EVERY_S = 2.0


class Janitor(threading.Thread):
    def __init__(self, settings: Settings, name: str):
        super().__init__(name="subnetscope-janitor", daemon=True)
        self.settings = settings
        self.worker_name = name
        # Its own connection: the work horse is forked while this thread may be mid-command.
        self.store = Store(connect(settings.redis_url))
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.tick()
            except Exception as e:  # Redis restarting: keep trying, quietly
                log.warning("janitor: %s", e)
            self.stopped.wait(JANITOR_EVERY_S)

    def tick(self) -> None:
        self.store.announce_worker(self.worker_name, PRESENCE_TTL_S)
        if not self.store.take_janitor_lock(self.worker_name, max(1, int(JANITOR_EVERY_S))):
            return
        for aid in self.store.orphans():
            if self.store.requeue(aid):
                log.warning("analysis %s lost its worker; queued again to resume", aid)
                enqueue_analysis(self.store.r, self.settings, aid)
        sweep_fanouts(self.store, self.settings)  # fanned-out analyses: dead groups, lost reduces
        sweep_training_runs(self.store, self.settings)

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.store.retire_worker(self.worker_name)
        except Exception:
            pass
