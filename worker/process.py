"""The `subnetscope worker` process: an RQ worker that outlives Redis outages, plus its janitor
thread (worker/janitor.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid

import redis
from rq import Queue, SpawnWorker, Worker
from rq.exceptions import StopRequested

from app.core.settings import Settings
from app.core.store import connect
from worker.janitor import Janitor

log = logging.getLogger(__name__)


def gpu_present(settings: Settings) -> bool:
    if settings.device == "cpu":
        return False
    try:
        import torch

        # is_available() does not create a CUDA context, so the check itself is fork-safe.
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def worker_class(settings: Settings) -> type[Worker]:
    # A forked child cannot use CUDA initialised in its parent; a spawned horse starts clean.
    return SpawnWorker if gpu_present(settings) else Worker


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> int:
    import worker.engine  # noqa: F401  imported once here so each forked job starts warm
    import worker.tasks  # noqa: F401

    r = connect(settings.redis_url)
    name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    cls = worker_class(settings)
    janitor = Janitor(settings, name)
    janitor.start()
    log.info("worker %s (%s) on queue %r, Redis %s", name, cls.__name__, settings.queue,
             r.connection_pool.connection_kwargs.get("host"))
    try:
        while True:
            w = cls([Queue(settings.queue, connection=r)], connection=r, name=name)
            try:
                w.work(burst=burst, with_scheduler=True, logging_level="INFO")
            except redis.exceptions.ConnectionError:
                pass  # its teardown could not reach Redis either
            if burst or _stop_requested(w):
                return 0
            # RQ ends its loop when Redis vanishes under a running job; the process must not
            # die with it (nothing would restart it): wait for Redis and work again.
            log.warning("worker %s: lost Redis while working; waiting for it to come back", name)
            if not _wait_for_redis(r, w):
                return 0
            with contextlib.suppress(redis.exceptions.RedisError):
                w.register_death()  # frees the name for the next registration
            log.info("worker %s: Redis is back; working again", name)
    finally:
        janitor.stop()


def _stop_requested(w: Worker) -> bool:
    # RQ notes SIGTERM/SIGINT (warm shutdown) here; a loop that ended without one ended on an error.
    return getattr(w, "_shutdown_requested_date", None) is not None or bool(getattr(w, "_stop_requested", False))


def _wait_for_redis(r: redis.Redis, w: Worker) -> bool:
    """True once Redis answers; False if the worker is asked to stop meanwhile."""
    try:
        while not _stop_requested(w):
            with contextlib.suppress(redis.exceptions.RedisError):
                if r.ping():
                    return True
            time.sleep(1.0)
    except (StopRequested, redis.exceptions.RedisError):  # raised by RQ's signal handler
        pass
    return False
