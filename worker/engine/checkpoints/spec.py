"""What a user typed, parsed: SourceSpec (a Hub repo at a revision, or a local directory) and
where inside it the weights are (`subfolder`, `file`; the rule is in layout.py).

Every id, revision and path is checked here, before anything is opened: a malformed one is
`bad_id` / `bad_revision`, a local path outside the server's root `path_forbidden`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from worker.engine.checkpoints.layout import check_relative
from worker.engine.errors import EngineError

# huggingface_hub's own rule for repo ids (validate_repo_id), plus an optional org.
_REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")
_REVISION = re.compile(r"^[\w\-./]{1,200}$")


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "hub" | "local"
    id: str  # "org/name" for hub; absolute resolved path for local
    revision: str | None = None  # hub only; None means "main"
    display: str = ""  # what the user typed, e.g. "local:demo/base" (never a server path)
    # Where the weights are inside the checkpoint (worker/engine/checkpoints/layout.py): a folder
    # ("unet") and/or one file relative to it ("model.fp16.safetensors", an index, an adapter).
    subfolder: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        # Relative, no '..', sane characters, else EngineError("bad_id"); "" and "unet/" normalised.
        object.__setattr__(self, "subfolder", check_relative(self.subfolder, "subfolder"))
        object.__setattr__(self, "file", check_relative(self.file, "file"))

    @property
    def label(self) -> str:
        if self.kind == "hub":
            where = f"{self.id}@{self.revision}" if self.revision else self.id
        else:
            where = self.display or self.id
        return where + self.inside

    @property
    def inside(self) -> str:
        """' (subfolder=unet, file=x.safetensors)' when either is set, else ''."""
        parts = [f"{k}={v}" for k, v in (("subfolder", self.subfolder), ("file", self.file)) if v]
        return f" ({', '.join(parts)})" if parts else ""

    def placement(self) -> dict:
        """{"subfolder", "file"} for those set: added to describe() and the analysis id."""
        return {k: v for k, v in (("subfolder", self.subfolder), ("file", self.file)) if v}

def validate_revision(revision: str) -> str:
    if not _REVISION.match(revision) or ".." in revision or revision.startswith("/") or revision.endswith("/"):
        raise EngineError(
            "bad_revision",
            f"Revision {revision!r} is not a valid branch, tag or commit (letters, digits, '-', '_', '.', '/').",
        )
    return revision


def parse_source(
    text: str,
    *,
    revision: str | None = None,
    local_root: Path | None = None,
    allow_any_path: bool = False,
    subfolder: str | None = None,
    file: str | None = None,
) -> SourceSpec:
    """Turn what a user typed into a SourceSpec, refusing anything unsafe or malformed.

    "org/name" or "org/name@rev" is a Hub repo; "local:rel/dir" is a directory under
    `local_root`. Other paths ("/abs", "./dir", "~/dir", an existing directory) are
    accepted only with `allow_any_path` (the CLI); the server passes False, and then
    a path must resolve (symlinks followed) inside `local_root`, and so must the
    `subfolder` and `file` inside it. `subfolder`/`file` say where the weights are
    (worker/engine/checkpoints/layout.py); they must be relative, without '..' (else `bad_id`).
    """
    text = (text or "").strip()
    if not text:
        raise EngineError("bad_id", "A model id is required, e.g. 'org/name' or 'local:demo/base'.")
    subfolder, file = check_relative(subfolder, "subfolder"), check_relative(file, "file")
    if text.startswith("local:"):
        return _local_spec(text[len("local:") :], text, local_root, allow_any_path, relative_to_root=True,
                           subfolder=subfolder, file=file)
    looks_like_path = text.startswith(("/", "./", "../", "~")) or (allow_any_path and Path(text).expanduser().is_dir())
    if looks_like_path:
        return _local_spec(text, text, local_root, allow_any_path, relative_to_root=False,
                           subfolder=subfolder, file=file)
    repo, _, inline_rev = text.partition("@")
    if not _REPO_ID.match(repo) or ".." in repo or "--" in repo or repo.startswith((".", "-")):
        raise EngineError(
            "bad_id",
            f"{text!r} is not a valid Hugging Face model id: use 'org/name' (letters, digits, '-', '_', '.'), "
            "optionally '@revision', or 'local:dir' for a checkpoint under the local root.",
        )
    rev = revision or inline_rev or None
    if rev is not None:
        validate_revision(rev)
    return SourceSpec("hub", repo, rev, display=text, subfolder=subfolder, file=file)


def _local_spec(path_text: str, display: str, local_root: Path | None, allow_any_path: bool, *, relative_to_root: bool,
                subfolder: str | None = None, file: str | None = None) -> SourceSpec:
    raw = Path(path_text).expanduser()
    if relative_to_root and not raw.is_absolute():
        if local_root is None:
            raise EngineError("path_forbidden", "Local checkpoints are not enabled on this server (no local root configured).")
        raw = local_root / raw
    resolved = raw.resolve()
    if not allow_any_path:
        root = (local_root or Path("/nonexistent")).resolve()
        inner = resolved / (subfolder or "") / (file or "")
        # A subfolder or file that is a symlink out of the root is as forbidden as the directory.
        if not resolved.is_relative_to(root) or not inner.resolve().is_relative_to(root):
            raise EngineError(
                "path_forbidden",
                f"Local path {display!r} is outside the server's local root; only checkpoints under the "
                "configured root (SUBNETSCOPE_LOCAL_ROOT) are allowed.",
            )
    return SourceSpec("local", str(resolved), None, display=display, subfolder=subfolder, file=file)
