"""One job's run inside a worker: who it is, its heartbeat, its reopened sources, and the one
exception ladder that turns how it ended into what Redis records.

Every task of worker/tasks.py claims its work in Redis under an owner id (host, pid, RQ job),
keeps the claim's liveness key fresh from a thread (`Heartbeat`; an expired key is how a dead
worker is noticed), and ends through `JobRun.guarded`:

- AttemptLost (another attempt took the claim over): stop, write nothing;
- EngineError: a transient one RQ will retry releases the claim and re-raises; any other is the
  stored failure (its code and message);
- Redis connection errors: nothing can be written; re-raised (the claim expires, RQ's retry or
  the janitor resumes the work from what is stored);
- JobTimeoutException: failed with code `timeout`, when the task says what its time limit stops;
- anything else: failed with code `internal` (the worker log has the traceback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from app.core.settings import Settings, get_settings
from app.core.store import ALIVE_REFRESH_S, FAILED, Store, connect
from app.core.token_seal import unseal
from worker.engine import AnalysisOptions, EngineError, SourceSpec, open_source, parse_source

log = logging.getLogger(__name__)

LOST = "lost"  # what a task returns when another attempt took its claim over


class AttemptLost(Exception):
    """Another attempt took over this work (ours was presumed dead): stop without writing."""


class Heartbeat:
    """Calls `refresh` (which renews a claim's liveness key, False once the claim is lost) from a
    thread every ALIVE_REFRESH_S, so slow tensors never look dead."""

    def __init__(self, refresh: Callable[[], bool], label: str):
        self.refresh, self.label = refresh, label
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{label}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> None:
        """Raise AttemptLost once the claim is gone: the work stops where it is."""
        if self.lost:
            raise AttemptLost()

    def _loop(self) -> None:
        while not self._stop.wait(ALIVE_REFRESH_S):
            try:
                if not self.refresh():
                    self.lost = True
                    return
            except Exception:  # Redis blip: the next beat tries again
                log.warning("heartbeat for %s failed", self.label, exc_info=True)


@dataclass
class JobRun:
    job: Job | None  # None when a task is called directly (tests, the CLI)
    store: Store
    settings: Settings

    @classmethod
    def current(cls) -> JobRun:
        job = get_current_job()
        settings = get_settings()
        r = job.connection if job is not None else connect(settings.redis_url)
        return cls(job, Store(r), settings)

    @property
    def r(self) -> redis.Redis:
        return self.store.r

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{self.job.id if self.job else 'direct'}"

    @property
    def worker_name(self) -> str:
        return (self.job.worker_name if self.job is not None else None) or socket.gethostname()

    def heartbeat(self, refresh: Callable[[str], bool], label: str) -> Heartbeat:
        """`refresh(owner)` renews this job's claim."""
        return Heartbeat(lambda: refresh(self.owner), label)

    def resume_records(self, aid: str, only: set[str] | None = None) -> dict[str, dict]:
        """The analysis's finished tensor records (by name), from which an attempt resumes."""
        return {rec["name"]: rec for rec in map(json.loads, self.store.partial(aid))
                if only is None or rec["name"] in only}

    # --- sources ----------------------------------------------------------------------------

    def reopen(self, spec: dict, token: str | None, base=None):
        """A source as submitted. `base`: the reopened base, onto which a LoRA adapter is merged
        (never the one its config names)."""
        settings = self.settings
        where = {"subfolder": spec.get("subfolder"), "file": spec.get("file")}  # inside the checkpoint
        if spec["kind"] == "local":
            # Re-checked against the root: the directory may have become a symlink since submission.
            parsed = parse_source(spec["id"], local_root=settings.checkpoints_root, allow_any_path=False, **where)
            parsed = SourceSpec("local", parsed.id, None, display=spec.get("display") or parsed.display, **where)
        else:
            parsed = SourceSpec("hub", spec["id"], spec["revision"], display=spec.get("display") or spec["id"],
                                **where)
        return open_source(parsed, token=token, base=base, local_root=settings.checkpoints_root, allow_any_path=False)

    @contextlib.contextmanager
    def opened(self, aid: str, raw: dict[str, str]) -> Iterator[tuple]:
        """(base, tuned, options) of the analysis whose record is `raw`, reopened as submitted with the
        user's unsealed token; refused if a checkpoint changed since it was submitted."""
        request, specs = json.loads(raw["request"]), json.loads(raw["specs"])
        token = unseal(self.settings, self.store.get_token(aid)) or self.settings.hf_token
        base = self.reopen(specs["base"], token)
        try:
            tuned = self.reopen(specs["tuned"], token, base=base)
        except BaseException:
            base.close()
            raise
        with base, tuned:
            for role, src in (("base", base), ("tuned", tuned)):
                if src.sha != request["sources"][role]["sha"]:
                    raise EngineError(
                        "malformed",
                        f"The {role} checkpoint {src.spec.label} changed on disk since it was submitted; "
                        "submit it again to analyse the new files.",
                    )
            options = AnalysisOptions(tolerance=float(request["tolerance"]), rank=request["rank"],
                                      geometry=request.get("geometry", "off"), device=self.settings.device)
            yield base, tuned, options

    # --- the exception ladder ---------------------------------------------------------------

    def guarded(self, label: str, work: Callable[[], str], *, fail: Callable[[dict], None], internal: str,
                release: Callable[[dict], None] | None = None, timeout: str | None = None) -> str:
        """Run `work` (which records its own success and returns the job's status) and record how it
        failed, once, the same way for every task (see the module docstring).

        fail(error): store the failure; internal: the message of an internal error; release(error): give the
        claim back before RQ retries a transient error (None: such errors fail too); timeout: the
        message when the job's time limit stops it, `{timeout}` the limit in seconds (None: reported
        as an internal error)."""
        try:
            return work()
        except AttemptLost:
            log.warning("%s: lost its claim; another attempt continues it", label)
            return LOST
        except EngineError as e:
            retries_left = getattr(self.job, "retries_left", None) if self.job is not None else None
            if e.code == "transient" and release is not None and retries_left:
                log.warning("%s: transient error, retrying (%s left): %s", label, retries_left, e.message)
                release(e.to_dict())
                raise
            log.info("%s failed: [%s] %s", label, e.code, e.message)
            fail(e.to_dict())
            return FAILED
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            log.warning("%s: lost Redis mid-way; it resumes once Redis is back", label)
            raise
        except JobTimeoutException:
            if timeout is None:
                log.exception("%s: stopped by its time limit", label)
                fail({"code": "internal", "message": internal})
            else:
                fail({"code": "timeout", "message": timeout.format(timeout=getattr(self.job, "timeout", None))})
            return FAILED
        except Exception:
            log.exception("%s: internal error", label)
            fail({"code": "internal", "message": internal})
            return FAILED
