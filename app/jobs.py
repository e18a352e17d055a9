"""Submission: validate, resolve to commit shas, derive the content id, enqueue once.

Everything that can be refused is checked before a record exists, so a refused
request leaves nothing behind. The user's Hub token is used here to resolve the
revisions and is then handed to the worker through a short-lived key, never in the
job's arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass

from redis import Redis
from rq import Queue, Retry

from app.settings import Settings
from app.store import Store
from app.token_seal import seal

log = logging.getLogger(__name__)

# Codes the engine raises that mean "this request cannot be run": refused at the door.
SUBMISSION_CODES = frozenset({
    "bad_id", "bad_revision", "path_forbidden", "not_found", "revision_not_found",
    "gated", "no_safetensors", "malformed", "arch_mismatch",
})

# Transient Hub errors are retried with these waits (seconds); the scheduler runs them.
RETRY_INTERVALS = [5, 30, 120]

_ID = re.compile(r"^[0-9a-f]{16}$")


class Refused(Exception):
    """A request refused before anything was recorded; maps to HTTP `status`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def detail(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass
class Submitted:
    id: str
    status: str
    created: bool


def content_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


def analysis_id(engine_version: str, base_sha: str, tuned_sha: str, tolerance: float, rank: str) -> str:
    """The permalink: same checkpoints (by content), options and engine give the same id."""
    return content_id(engine_version, base_sha, tuned_sha, repr(float(tolerance)), rank)


def job_timeout(settings: Settings, total_bytes: int) -> int:
    return max(600, int(total_bytes / 1e9 * settings.job_timeout_per_gb))


def queue_for(r: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue, connection=r)


def resolve_sources(settings: Settings, base: str, tuned: str, base_revision: str | None,
                    tuned_revision: str | None, token: str | None):
    """Parse, open (headers only) and check compatibility of both checkpoints; EngineError on refusal."""
    from worker.engine import EngineError, check_compatible, open_source, parse_source

    specs = []
    for text, rev, role in ((base, base_revision, "base"), (tuned, tuned_revision, "tuned")):
        spec = parse_source(text, revision=rev or None, local_root=settings.checkpoints_root,
                            allow_any_path=False)
        if rev and spec.kind != "hub":
            raise EngineError("bad_revision", f"The {role} checkpoint {text!r} is local; revisions apply to "
                                              "Hugging Face ids only.")
        specs.append(spec)
    sources = []
    try:
        for spec in specs:
            sources.append(open_source(spec, token=token or settings.hf_token))
        check_compatible(sources[0], sources[1])
    except BaseException:
        for s in sources:
            s.close()
        raise
    return sources


def spec_record(source) -> dict:
    """How the worker reopens a source: hub pinned to the resolved commit, local by resolved path."""
    spec = source.spec
    return {"kind": spec.kind, "id": spec.id, "display": spec.display,
            "revision": source.sha if spec.kind == "hub" else None}


def submit_analysis(r: Redis, settings: Settings, *, base: str, tuned: str,
                    base_revision: str | None = None, tuned_revision: str | None = None,
                    tolerance: float = 1e-5, rank: str = "off", token: str | None = None) -> Submitted:
    from worker.engine import ENGINE_VERSION, EngineError

    try:
        base_src, tuned_src = resolve_sources(settings, base, tuned, base_revision, tuned_revision, token)
    except EngineError as e:
        if e.code in SUBMISSION_CODES:
            raise Refused(422, e.code, e.message) from None
        # Not the request's fault: Hub unreachable (503), disk full (507), a bug (500).
        raise Refused({"transient": 503, "disk_full": 507}.get(e.code, 500), e.code, e.message) from None
    try:
        aid = analysis_id(ENGINE_VERSION, base_src.sha, tuned_src.sha, tolerance, rank)
        total_bytes = base_src.total_bytes + tuned_src.total_bytes
        request = {
            "base": base, "tuned": tuned, "base_revision": base_revision, "tuned_revision": tuned_revision,
            "tolerance": float(tolerance), "rank": rank,
            "sources": {"base": base_src.describe(), "tuned": tuned_src.describe()},
            "total_bytes": total_bytes, "engine_version": ENGINE_VERSION,
        }
        specs = {"base": spec_record(base_src), "tuned": spec_record(tuned_src)}
    finally:
        base_src.close()
        tuned_src.close()
    progress = {"tensors_done": 0, "tensors_total": len(tuned_src.tensors), "bytes_done": 0,
                "bytes_total": total_bytes, "bytes_per_s": None, "eta_s": None}

    store = Store(r)
    created = store.create_analysis(aid, request, progress)
    if not created:
        status = (store.get_raw(aid) or {}).get("status", "queued")
        return Submitted(aid, status, False)
    try:
        store.set_fields(aid, specs=specs)
        if token:
            store.put_token(aid, seal(settings, token), settings.token_ttl_seconds)
        enqueue_analysis(r, settings, aid, total_bytes)
    except Exception:
        if created == 1:
            store.drop_analysis(aid)
        raise
    return Submitted(aid, "queued", True)


def enqueue_analysis(r: Redis, settings: Settings, aid: str, total_bytes: int | None = None) -> None:
    """Put a run of `aid` on the queue; only the id travels in the job."""
    if total_bytes is None:
        raw = Store(r).get_raw(aid) or {}
        total_bytes = json.loads(raw.get("request") or "{}").get("total_bytes", 0)
    queue_for(r, settings).enqueue(
        "worker.tasks.run_analysis", aid,
        job_timeout=job_timeout(settings, total_bytes),
        retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
        result_ttl=0,  # our own keys hold the result
        failure_ttl=7 * 24 * 3600,
        description=f"analysis {aid}",
    )


def retry_analysis(r: Redis, settings: Settings, aid: str) -> str:
    """Run a failed or stalled analysis again, resuming from its finished tensors."""
    store = Store(r)
    raw = store.get_raw(aid)
    if raw is None:
        raise Refused(404, "unknown_analysis", f"No analysis with id {aid!r}.")
    status = raw["status"]
    if status == "failed":
        if store.create_analysis(aid, {}, json.loads(raw.get("progress") or "null")) == 2:
            enqueue_analysis(r, settings, aid)
        return "queued"
    if status == "running" and not store.is_alive(aid) and store.requeue(aid):
        enqueue_analysis(r, settings, aid)
        return "queued"
    return status


def submit_overlap(r: Redis, settings: Settings, ids: list[str]) -> Submitted:
    from worker.engine import ENGINE_VERSION

    if not 2 <= len(ids) <= 3:
        raise Refused(422, "bad_request", "An overlap compares two or three analyses.")
    if len(set(ids)) != len(ids):
        raise Refused(422, "bad_request", "An overlap needs distinct analyses; the same id appears twice.")
    store = Store(r)
    results = []
    for aid in ids:
        raw = store.get_raw(aid) if valid_id(aid) else None
        if raw is None:
            raise Refused(404, "unknown_analysis", f"No analysis with id {aid!r}.")
        if raw["status"] != "done":
            raise Refused(409, "not_done", f"Analysis {aid} is {raw['status']}; overlaps need finished analyses.")
        results.append(json.loads(raw["result"]))
    base_shas = {res["base"]["sha"] for res in results}
    if len(base_shas) != 1:
        raise Refused(422, "base_mismatch", "Overlaps compare finetunes of one base checkpoint; these analyses "
                                            "have different bases.")
    tolerances = {repr(float(res["options"]["tolerance"])) for res in results}
    if len(tolerances) != 1:
        raise Refused(422, "tolerance_mismatch", "These analyses were run at different tolerances "
                                                 f"({', '.join(sorted(tolerances))}); overlap needs one.")
    oid = content_id("overlap", ENGINE_VERSION, *ids)
    created = store.create_overlap(oid, ids)
    if not created:
        return Submitted(oid, (store.get_overlap_raw(oid) or {}).get("status", "queued"), False)
    try:
        queue_for(r, settings).enqueue("worker.tasks.run_overlap", oid, job_timeout=3600, result_ttl=0,
                                       failure_ttl=7 * 24 * 3600, description=f"overlap {oid}")
    except Exception:
        if created == 1:
            store.drop_overlap(oid)
        raise
    return Submitted(oid, "queued", True)
