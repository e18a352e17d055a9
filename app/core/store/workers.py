"""Live workers: an expiring presence key per worker (the health endpoint counts them; they vanish
within seconds of a SIGKILL, unlike RQ's own registrations) and the janitors' lock."""

from __future__ import annotations

import time

from app.core.store.base import PREFIX, Keyed, KeyTemplate

presence_key = KeyTemplate("worker")  # per worker name
WORKER_PRESENCE = presence_key.prefix
JANITOR_LOCK = f"{PREFIX}:janitor"  # held for one sweep by one worker's janitor


class Workers(Keyed):
    def announce_worker(self, name: str, ttl: int) -> None:
        self.r.set(presence_key(name), repr(time.time()), ex=ttl)

    def retire_worker(self, name: str) -> None:
        self.r.delete(presence_key(name))

    def live_workers(self) -> int:
        return sum(1 for _ in self.r.scan_iter(match=presence_key("*"), count=100))

    def take_janitor_lock(self, name: str, seconds: int) -> bool:
        """One janitor sweeps at a time (for `seconds`); the others only announce their worker."""
        return bool(self.r.set(JANITOR_LOCK, name, nx=True, ex=seconds))
