"""Where submissions are resolved: bounded thread pools of their own, never the one reads use.

Resolving a submission opens both checkpoints (headers only) and, for a Hub repo, asks the
Hub for the commit of each revision; a slow or hanging Hub can hold that for minutes (its
HTTP timeouts times its retries). Sync route handlers share one thread pool (anyio's, 40
threads), so submissions resolved there could starve every read. Instead the submit
routes are `async` and hand the work to one of two pools of `SUBNETSCOPE_RESOLVE_THREADS`
threads: one for pairs that name a Hub repo, one for local pairs, so a hanging Hub can
delay neither reads nor local submissions.

A Hub submission has a time budget (`SUBNETSCOPE_HUB_TIMEOUT_S`, counted from arrival,
queueing included): past it the client gets 504 `hub_unavailable` at once. A thread
stuck in a Hub call cannot be interrupted; it finishes within the engine's own timeouts,
sees that its deadline has passed and records nothing (`app/web/submission.py: submit_analysis`),
and the pool's bound keeps the number of such threads fixed. The threads are daemons, so
one stuck on a hanging Hub never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from app.core.settings import Settings
from app.web.submission import Refused

T = TypeVar("T")


def names_hub(*sources: str | None) -> bool:
    """Does resolving these need the Hub? An empty base may be named by a LoRA adapter's
    config, possibly on the Hub, so it counts as Hub."""
    return any(not (s or "").strip().startswith("local:") for s in sources)


def hub_timeout(budget: float, what: str) -> Refused:
    return Refused(504, "hub_unavailable",
                   f"The Hugging Face Hub did not answer within {budget:g} s while resolving {what}; nothing was "
                   "recorded. The Hub or the network is slow or down: try again later.")


class Pool:
    """`size` daemon threads taking work in order; a job cancelled before it starts never runs.

    (concurrent.futures' pool joins its threads at interpreter exit, which a thread stuck on a
    hanging Hub would hold up for minutes.)"""

    def __init__(self, size: int, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], T]) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            future, fn = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # its client was answered (504) while it waited
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                future.set_exception(exc)


class Resolver:
    def __init__(self, settings: Settings):
        self.hub_budget = settings.hub_timeout_s
        self.hub = Pool(settings.resolve_threads, "resolve-hub")
        self.local = Pool(settings.resolve_threads, "resolve-local")

    async def run(self, fn: Callable[..., T], *, hub: bool, what: str) -> T:
        """`fn(deadline=...)` in the right pool; a Hub one answers 504 `hub_unavailable` past its budget."""
        if not hub:
            return await asyncio.wrap_future(self.local.submit(functools.partial(fn, deadline=None)))
        deadline = time.monotonic() + self.hub_budget
        future = asyncio.wrap_future(self.hub.submit(functools.partial(fn, deadline=deadline)))
        try:
            return await asyncio.wait_for(future, self.hub_budget)
        except TimeoutError:  # asyncio's, since 3.11
            raise hub_timeout(self.hub_budget, what) from None
