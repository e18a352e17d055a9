"""Training runs as checkpoint lists (docs/METRICS.md, "Training dynamics").

A run is a base plus checkpoints c_1..c_k ordered by training step, from one of:

- a local directory of `checkpoint-<step>/` folders, as the HF Trainer and TRL save them.
  Each folder is an ordinary local checkpoint: its weights are chosen by layout.py's rule
  (model.safetensors or the shards of its index), so optimizer.pt, scheduler.pt,
  rng_state*.pth, trainer_state.json and training_args.bin are never read;
- a Hub repo whose revisions (branches and tags, `HfApi.list_repo_refs`) are the checkpoints,
  e.g. `step-100`. Each is opened by name and pinned to the commit it resolves to.

`revisions` chooses among them: a glob pattern (`step*`, fnmatch, case-sensitive) or an
explicit comma list (`step-100,step-300`); by default every `checkpoint-<n>` folder, or every
ref with a number in its name (so never `main`). Checkpoints are ordered by their step, the
last number in the name (`checkpoint-500` -> 500, `global_step200` -> 200); an explicit list
holding a name without a number keeps the order given. The base is the one given, else the
run's first checkpoint (then no longer one of c_1..c_k).

Refused before any weight byte is read: a pattern or list that names nothing, fewer than two
checkpoints after the base, more than the limit, checkpoints of different architectures
(check_compatible against the base, and the same tensor names and shapes across the run).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.engine.checkpoints.sources import Source
from worker.engine.checkpoints.spec import SourceSpec, parse_source, validate_revision
from worker.engine.errors import EngineError

# How many checkpoints (after the base) a run may compare by default; the service's
# SUBNETSCOPE_MAX_RUN_CHECKPOINTS and the CLI's --max-checkpoints override it.
MAX_CHECKPOINTS = 64
# At least this many checkpoints after the base: one is an analysis, not a run.
MIN_CHECKPOINTS = 2
# Checkpoints opened (headers, Hub look-ups, content hashes) at once.
OPEN_THREADS = 8
# HF Trainer / TRL folder names.
TRAINER_FOLDER = re.compile(r"^checkpoint-(\d+)$")
_NUMBER = re.compile(r"\d+")
_GLOB = re.compile(r"[*?\[]")
# Shown in messages before "..."
_SHOWN = 8


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run."""

    name: str  # folder or ref name: "checkpoint-500", "step-100"
    step: int | None  # the last number in the name
    spec: SourceSpec  # how to open it (local folder, or the repo at that revision)
    ref: str | None = None  # hub: "refs/heads/step-100" or "refs/tags/step-100"
    commit: str | None = None  # hub: the commit the ref pointed at when listed

    def describe(self) -> dict:
        return {"name": self.name, "step": self.step, "ref": self.ref}


@dataclass
class RunPlan:
    """What a run compares: the base, then checkpoints c_1..c_k in step order."""

    run: SourceSpec
    base: SourceSpec
    checkpoints: list[RunCheckpoint]
    base_name: str | None = None  # the checkpoint's name when the base is the run's first
    listed: list[str] = field(default_factory=list)  # every name the selection kept, in order

    @property
    def label(self) -> str:
        return self.run.label


def step_of(name: str) -> int | None:
    """The training step in a checkpoint's name: its last number."""
    numbers = _NUMBER.findall(name.rsplit("/", 1)[-1]) or _NUMBER.findall(name)
    return int(numbers[-1]) if numbers else None


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def parse_run(text: str, *, local_root: Path | None = None, allow_any_path: bool = False) -> SourceSpec:
    """A run as a user typed it: 'org/name' (a Hub repo) or a local directory ('local:dir', or a path
    with allow_any_path); a revision in the id is refused, `revisions` chooses them."""
    spec = parse_source(text, local_root=local_root, allow_any_path=allow_any_path)
    if spec.kind == "hub" and spec.revision:
        raise EngineError("bad_id", f"{text!r}: a run is a whole repo; choose its revisions with `revisions` "
                                    "(a pattern such as 'step*' or a comma list), not '@revision'.")
    return spec


def select(names: Sequence[str], revisions: str | None, *, where: str, default: str) -> list[str]:
    """The names `revisions` chooses (a glob pattern or a comma list), ordered by step.

    With no `revisions`, the names that have a step (`default` says which, for messages).
    """
    text = (revisions or "").strip()
    available = list(dict.fromkeys(names))
    if not text:
        chosen = [n for n in available if step_of(n) is not None]
        if not chosen:
            raise EngineError("revision_not_found", f"{where} has no {default}"
                              + (f" (it has: {_listing(available)})" if available else "")
                              + "; name the revisions with a pattern or a comma list.")
        return sorted(chosen, key=lambda n: (step_of(n), n))
    if "," in text or not _GLOB.search(text):
        wanted = [w.strip() for w in text.split(",") if w.strip()]
        if not wanted:
            raise EngineError("bad_request", f"No revision named in {revisions!r}.")
        missing = [w for w in wanted if w not in available]
        if missing:
            raise EngineError("revision_not_found", f"{where} has no checkpoint named {_listing(missing)}"
                              + (f" (it has: {_listing(available)})" if available else "") + ".")
        wanted = list(dict.fromkeys(wanted))
        if any(step_of(w) is None for w in wanted):
            return wanted  # the order given
        return sorted(wanted, key=lambda n: (step_of(n), n))
    chosen = [n for n in available if fnmatch.fnmatchcase(n, text)]
    if not chosen:
        raise EngineError("revision_not_found", f"The pattern {text!r} matches no checkpoint of {where}"
                          + (f" (it has: {_listing(available)})" if available else "") + ".")
    if any(step_of(n) is None for n in chosen):
        numbered = [n for n in chosen if step_of(n) is not None]
        if not numbered:
            raise EngineError("bad_request", f"The pattern {text!r} matches {_listing(chosen)} in {where}, none "
                                             "with a step number to order them by; give them as a comma list.")
        chosen = numbered  # e.g. '*' matched main too: a run is ordered by step
    return sorted(chosen, key=lambda n: (step_of(n), n))


# --- listing ------------------------------------------------------------------------------

def list_run(run: SourceSpec, *, revisions: str | None = None, token: str | None = None,
             local_root: Path | None = None, allow_any_path: bool = False) -> list[RunCheckpoint]:
    """The run's checkpoints that `revisions` chooses, in step order (nothing opened yet)."""
    if run.kind == "local":
        return _list_local(run, revisions, local_root, allow_any_path)
    return _list_hub(run, revisions, token)


def _list_local(run: SourceSpec, revisions: str | None, local_root: Path | None,
                allow_any_path: bool) -> list[RunCheckpoint]:
    directory = Path(run.id)
    shown = run.display or run.id
    if not directory.is_dir():
        raise EngineError("not_found", f"Run directory {shown} does not exist.")
    folders = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not (revisions or "").strip():
        folders = [f for f in folders if TRAINER_FOLDER.match(f)]
        if not folders:
            raise EngineError("not_found", f"Run directory {shown} holds no checkpoint-<step>/ folders (the HF "
                                           "Trainer / TRL layout); name other folders with a pattern or a comma list.")
    names = select(folders, revisions, where=f"run directory {shown}", default="checkpoint-<step>/ folders")
    out = []
    for name in names:
        # Parsed like a typed id, so a folder that links out of the local root is refused too.
        spec = parse_source(f"{shown.rstrip('/')}/{name}", local_root=local_root, allow_any_path=allow_any_path)
        out.append(RunCheckpoint(name, step_of(name), spec))
    return out


def _list_hub(run: SourceSpec, revisions: str | None, token: str | None) -> list[RunCheckpoint]:
    from huggingface_hub import constants

    refs = _cached_refs(run.id) if constants.is_offline_mode() else _hub_refs(run.id, token)
    by_name: dict[str, tuple[str | None, str | None]] = {}
    for name, ref, commit in refs:
        by_name.setdefault(name, (ref, commit))  # a branch and a tag of one name: the branch, as the Hub resolves
    names = select(list(by_name), revisions, where=f"Hub repo {run.id}", default="branch or tag with a step number")
    out = []
    for name in names:
        validate_revision(name)
        ref, commit = by_name[name]
        spec = SourceSpec("hub", run.id, name, display=f"{run.id}@{name}")
        out.append(RunCheckpoint(name, step_of(name), spec, ref=ref, commit=commit))
    return out


def _hub_refs(repo: str, token: str | None) -> list[tuple]:
    """(name, ref, commit) of every branch and tag (the HTTP policy is hub_http's)."""
    from worker.engine.checkpoints.hub_http import list_refs

    return list_refs(repo, token)


def _cached_refs(repo: str) -> list[tuple]:
    """Offline (HF_HUB_OFFLINE=1): the revisions of `repo` the standard cache knows (refs/<name> files)."""
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs"
    if not refs.is_dir():
        raise EngineError("not_found", f"{repo} is not in the local Hugging Face cache and offline mode is on "
                                       "(HF_HUB_OFFLINE=1): download its revisions first, or unset HF_HUB_OFFLINE.")
    out = []
    for path in sorted(p for p in refs.rglob("*") if p.is_file()):
        name = path.relative_to(refs).as_posix()
        out.append((name, None, path.read_text().strip() or None))
    return out


# --- planning and opening -------------------------------------------------------------------

def plan_run(base: str | None, run: str, *, revisions: str | None = None, limit: int = MAX_CHECKPOINTS,
             token: str | None = None, local_root: Path | None = None, allow_any_path: bool = False) -> RunPlan:
    """Parse and list a run, choose its base, and refuse a run too short or too long (nothing opened)."""
    run_spec = parse_run(run, local_root=local_root, allow_any_path=allow_any_path)
    listed = list_run(run_spec, revisions=revisions, token=token, local_root=local_root,
                      allow_any_path=allow_any_path)
    base_name = None
    if (base or "").strip():
        base_spec = parse_source(base, local_root=local_root, allow_any_path=allow_any_path)
        checkpoints = listed
    else:
        base_spec, base_name, checkpoints = listed[0].spec, listed[0].name, listed[1:]
    names = [c.name for c in listed]
    if len(checkpoints) < MIN_CHECKPOINTS:
        after = "" if base_name is None else f" after its first ({base_name}), which is the base when none is given"
        raise EngineError("bad_request", f"A run needs at least {MIN_CHECKPOINTS} checkpoints{after}; {run_spec.label} "
                                         f"has {len(checkpoints)} ({_listing(names) or 'none'}). Analyse a single "
                                         "checkpoint against its base as an ordinary analysis.")
    if len(checkpoints) > limit:
        raise EngineError("bad_request", f"{run_spec.label} has {len(checkpoints)} checkpoints to compare, more than "
                                         f"the limit of {limit}; choose fewer with a pattern or a comma list "
                                         "(e.g. every other step).")
    return RunPlan(run_spec, base_spec, checkpoints, base_name, names)


def open_run(plan: RunPlan, *, token: str | None = None, local_root: Path | None = None,
             allow_any_path: bool = False) -> tuple[Source, list[Source]]:
    """Open the base and every checkpoint (headers only) and check they are one architecture.

    Closes whatever it opened when it refuses. A checkpoint holding a LoRA adapter is merged
    onto the base, as an analysis would.
    """
    from concurrent.futures import ThreadPoolExecutor

    from worker.engine.checkpoints.open import open_source

    options = dict(token=token, local_root=local_root, allow_any_path=allow_any_path)
    base = open_source(plan.base, **options)
    futures = []
    try:
        # Several at once: a Hub revision costs a few round trips, a local folder its content hash.
        with ThreadPoolExecutor(min(OPEN_THREADS, len(plan.checkpoints)), thread_name_prefix="open-run") as pool:
            futures = [pool.submit(open_source, c.spec, base=base, **options) for c in plan.checkpoints]
        sources = [f.result() for f in futures]
        check_run(base, sources, [c.name for c in plan.checkpoints])
    except BaseException:
        for f in futures:
            if f.done() and f.exception() is None:
                f.result().close()
        base.close()
        raise
    return base, sources


def check_run(base: Source, checkpoints: Sequence[Source], names: Sequence[str]) -> None:
    """Every checkpoint compatible with the base, and all of one architecture: same tensor names and
    shapes (a run's checkpoints come from one model; the base may differ by a resized vocabulary)."""
    from worker.engine.pairing.pairs import check_compatible

    for name, src in zip(names, checkpoints):
        try:
            check_compatible(base, src)
        except EngineError as exc:
            raise EngineError(exc.code, f"Checkpoint {name} of the run: {exc.message}") from None
    first_name, first = names[0], checkpoints[0]
    shapes = {n: tuple(t.shape) for n, t in first.tensors.items()}
    arch = (first.config or {}).get("model_type")
    for name, src in zip(names[1:], checkpoints[1:]):
        other = (src.config or {}).get("model_type")
        if arch and other and other != arch:
            raise EngineError("arch_mismatch", f"The run mixes architectures: {first_name} is {arch}, {name} is {other}. "
                                               "A run's checkpoints come from one model.")
        theirs = {n: tuple(t.shape) for n, t in src.tensors.items()}
        if theirs == shapes:
            continue
        only_first = sorted(set(shapes) - set(theirs))
        only_theirs = sorted(set(theirs) - set(shapes))
        reshaped = sorted(n for n in set(shapes) & set(theirs) if shapes[n] != theirs[n])
        if only_first or only_theirs:
            what = f"{len(only_first) + len(only_theirs)} tensor names differ (e.g. {(only_first + only_theirs)[0]})"
        else:
            n = reshaped[0]
            what = f"{len(reshaped)} tensors differ in shape (e.g. {n}: {list(shapes[n])} vs {list(theirs[n])})"
        raise EngineError("arch_mismatch", f"The run mixes architectures: {name} does not have the tensors of "
                                           f"{first_name} ({what}). A run's checkpoints come from one model.")
