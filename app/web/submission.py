"""Submission: validate, resolve to commit shas, derive the content id, enqueue once.

Everything that can be refused is checked before a record exists, so a refused
request leaves nothing behind. The user's Hub token is used here to resolve the
revisions and is then handed to the worker through a short-lived key, never in the
job's arguments.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from redis import Redis

from app.core.ids import analysis_id, content_id, valid_id
from app.core.queues import enqueue_analysis, queue_for
from app.core.refusals import Refused, refusal
from app.core.settings import Settings
from app.core.store import Store
from app.core.token_seal import seal
from worker.engine.tolerance import tolerance_key

log = logging.getLogger(__name__)


@dataclass
class Submitted:
    id: str
    status: str
    created: bool


def resolve_sources(settings: Settings, base: str | None, tuned: str, base_revision: str | None,
                    tuned_revision: str | None, token: str | None, *,
                    base_where: dict | None = None, tuned_where: dict | None = None):
    """Parse, open (headers only) and check compatibility of both checkpoints; EngineError on refusal.

    A finetuned LoRA adapter is merged onto the base; with no base, onto the one its
    adapter_config.json names, which passes the same checks as a typed id (a local path must
    lie under the local root). base_where / tuned_where: {"subfolder", "file"} inside each checkpoint.
    """
    from worker.engine import EngineError, check_compatible, open_pair, parse_source

    wheres = {"base": {k: v for k, v in (base_where or {}).items() if v},
              "tuned": {k: v for k, v in (tuned_where or {}).items() if v}}
    if not (base or "").strip() and (base_revision or wheres["base"]):
        raise EngineError("bad_request", "base_revision, base_subfolder or base_file was given without a base: "
                                         "name the base too, or leave them all empty to use the base a LoRA "
                                         "adapter's config names.")
    specs = []
    for text, rev, role in ((base, base_revision, "base"), (tuned, tuned_revision, "tuned")):
        if role == "base" and not (text or "").strip():
            specs.append(None)  # only a LoRA adapter as tuned can say which base it needs
            continue
        spec = parse_source(text, revision=rev or None, local_root=settings.checkpoints_root,
                            allow_any_path=False, **wheres[role])
        if rev and spec.kind != "hub":
            raise EngineError("bad_revision", f"The {role} checkpoint {text!r} is local; revisions apply to "
                                              "Hugging Face ids only.")
        specs.append(spec)
    if settings.max_bytes:  # local pairs: before their content ids read every byte
        check_size(settings.max_bytes, {role: local_weight_bytes(spec)
                                        for role, spec in zip(("base", "tuned"), specs)})
    sources = open_pair(specs[0], specs[1], token=token or settings.hf_token,
                        local_root=settings.checkpoints_root, allow_any_path=False)
    try:
        if settings.max_bytes:  # every pair, from the headers just read (no weight byte yet)
            check_size(settings.max_bytes, {"base": sources[0].total_bytes, "tuned": sources[1].total_bytes})
        check_compatible(*sources)
    except BaseException:
        for s in sources:
            s.close()
        raise
    return list(sources)


def local_weight_bytes(spec) -> int | None:
    """Bytes of weights a local checkpoint's safetensors headers declare, reading only the headers;
    None for a Hub spec, or when the checkpoint cannot be read this way (opening it then says why)."""
    from pathlib import Path

    from worker.engine.checkpoints.safetensors_format import header_length, parse_header
    from worker.engine.checkpoints.sources import safetensors_files

    if spec is None or spec.kind != "local":
        return None
    try:
        directory = Path(spec.id)
        total = 0
        for name in safetensors_files(directory, spec.label, subfolder=spec.subfolder, file=spec.file):
            with open(directory / name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                n = header_length(f.read(8), name, size)
                infos, _ = parse_header(f.read(n), name, size)
            total += sum(info.nbytes for info in infos.values())
        return total
    except Exception:  # noqa: BLE001 - open_pair refuses it with the right code
        return None


def check_size(limit: int, sizes: dict[str, int | None]) -> None:
    """Refused 422 `too_large` when the pair's weights exceed `limit` (SUBNETSCOPE_MAX_BYTES)."""
    total = sum(v for v in sizes.values() if v)
    if total > limit:
        parts = " + ".join(f"{role} {_gb(v)}" for role, v in sizes.items() if v)
        raise Refused(422, "too_large", f"This pair holds {_gb(total)} of weights ({parts}); this deployment "
                                       f"analyses pairs of at most {_gb(limit)} (SUBNETSCOPE_MAX_BYTES). Nothing "
                                       "was read but the safetensors headers, and nothing was recorded.")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def spec_record(source) -> dict:
    """How the worker reopens a source: hub pinned to the resolved commit, local by resolved path.

    A LoRA adapter is pinned to its own commit; the worker merges it onto the reopened base.
    """
    from worker.engine import LoraMergedSource

    spec = source.spec
    commit = source.adapter.sha if isinstance(source, LoraMergedSource) else source.sha
    return {"kind": spec.kind, "id": spec.id, "display": spec.display,
            "revision": commit if spec.kind == "hub" else None, **spec.placement()}


def submit_analysis(r: Redis, settings: Settings, *, base: str | None, tuned: str,
                    base_revision: str | None = None, tuned_revision: str | None = None,
                    tolerance: float = 1e-5, rank: str = "off", token: str | None = None,
                    geometry: str = "off", base_subfolder: str | None = None, tuned_subfolder: str | None = None,
                    base_file: str | None = None, tuned_file: str | None = None,
                    deadline: float | None = None) -> Submitted:
    """`deadline` (time.monotonic()): past it, the client was already answered 504 (app/web/resolving.py),
    so a resolution that finishes late records nothing."""
    from worker.engine import EngineError

    try:
        base_src, tuned_src = resolve_sources(settings, base, tuned, base_revision, tuned_revision, token,
                                              base_where={"subfolder": base_subfolder, "file": base_file},
                                              tuned_where={"subfolder": tuned_subfolder, "file": tuned_file})
    except EngineError as e:
        raise refusal(e) from None
    try:
        prepared = prepare_analysis(base_src, tuned_src, base=base, tuned=tuned, base_revision=base_revision,
                                    tuned_revision=tuned_revision, tolerance=tolerance, rank=rank, geometry=geometry)
    finally:
        base_src.close()
        tuned_src.close()
    if deadline is not None and time.monotonic() > deadline:
        raise Refused(504, "hub_unavailable", "Resolving the pair on the Hub took longer than the deployment's "
                                              "budget (SUBNETSCOPE_HUB_TIMEOUT_S); nothing was recorded.")
    return commit_analysis(r, settings, prepared, token)


@dataclass
class Prepared:
    """An analysis resolved to content (its id, stored request and pinned specs), not yet recorded."""

    id: str
    request: dict
    specs: dict
    progress: dict
    total_bytes: int


def prepare_analysis(base_src, tuned_src, *, base: str | None, tuned: str, base_revision: str | None = None,
                     tuned_revision: str | None = None, tolerance: float = 1e-5, rank: str = "off",
                     geometry: str = "off") -> Prepared:
    """The id, request and specs of the analysis of two opened sources (which stay open)."""
    from worker.engine import ENGINE_VERSION

    aid = analysis_id(ENGINE_VERSION, base_src.sha, tuned_src.sha, tolerance, rank, geometry,
                      base_where=base_src.spec.placement(), tuned_where=tuned_src.spec.placement())
    total_bytes = base_src.total_bytes + tuned_src.total_bytes
    request = {
        # With no base given, the one the adapter's config names, as a user would type it.
        "base": base or base_src.spec.display or base_src.spec.id, "base_from_adapter": not base,
        "tuned": tuned, "base_revision": base_revision, "tuned_revision": tuned_revision,
        "tolerance": float(tolerance), "rank": rank, "geometry": geometry,
        # base_subfolder, base_file, tuned_subfolder, tuned_file: only those given
        **{f"{side}_{k}": v for side, src in (("base", base_src), ("tuned", tuned_src))
           for k, v in src.spec.placement().items()},
        "sources": {"base": base_src.describe(), "tuned": tuned_src.describe()},
        "total_bytes": total_bytes, "engine_version": ENGINE_VERSION,
    }
    specs = {"base": spec_record(base_src), "tuned": spec_record(tuned_src)}
    progress = {"tensors_done": 0, "tensors_total": len(tuned_src.tensors), "bytes_done": 0,
                "bytes_total": total_bytes, "bytes_per_s": None, "eta_s": None}
    return Prepared(aid, request, specs, progress, total_bytes)


def commit_analysis(r: Redis, settings: Settings, prepared: Prepared, token: str | None = None) -> Submitted:
    """Record and enqueue a prepared analysis once: an existing record (queued, running, done) is reused."""
    aid = prepared.id
    store = Store(r)
    created = store.create_analysis(aid, prepared.request, prepared.progress)
    if not created:
        status = (store.get_raw(aid) or {}).get("status", "queued")
        return Submitted(aid, status, False)
    try:
        store.set_fields(aid, specs=prepared.specs)
        if token:
            store.put_token(aid, seal(settings, token), settings.token_ttl_seconds)
        enqueue_analysis(r, settings, aid, prepared.total_bytes)
    except Exception:
        if created == 1:
            store.drop_analysis(aid)
        raise
    return Submitted(aid, "queued", True)


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
    # One base: the same commit, and the same subfolder/file inside it.
    base_shas = {(res["base"]["sha"], res["base"].get("subfolder"), res["base"].get("file")) for res in results}
    if len(base_shas) != 1:
        raise Refused(422, "base_mismatch", "Overlaps compare finetunes of one base checkpoint; these analyses "
                                            "have different bases.")
    tolerances = {tolerance_key(res["options"]["tolerance"]) for res in results}
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
