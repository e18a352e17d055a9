"""Where checkpoints come from: a parsed id, and Sources that read tensors lazily.

A Source knows every tensor of a checkpoint from the safetensors headers alone
(no weight bytes), and reads element ranges of a tensor on demand, so an analysis
streams pieces of bounded size whatever the model size. The Hub source lives in
`hub.py`, which file holds the weights is decided in `layout.py` (for both), and
`open.py` dispatches a spec to its source; this module holds the shared parts and
the local-directory source, and imports neither `hub` nor `open`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import torch

from worker.engine.checkpoints.layout import check_relative, select_weights
from worker.engine.checkpoints.safetensors_format import TensorInfo, bytes_to_tensor, header_length, parse_header
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


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of the flattened tensor `name`."""

    name: str
    start: int
    stop: int


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


class Source(ABC):
    """A checkpoint whose tensors are known from headers and read in pieces on demand."""

    spec: SourceSpec
    sha: str
    tensors: dict[str, TensorInfo]
    config: dict | None
    # Weight bytes are held only for pieces not yet consumed, up to this many bytes.
    prefetch_bytes: int = 256 << 20

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def bytes_read(self) -> int:
        """Weight bytes actually read so far (local: bytes of the pieces read; Hub: body bytes
        of weight range requests, a retried request counted again). Headers and JSON excluded."""
        return self._bytes_read

    _bytes_read = 0
    _count_lock = threading.Lock()  # shared by every source: one += per piece or request

    def _count(self, n: int) -> None:
        with self._count_lock:
            self._bytes_read += n

    def describe(self) -> dict:
        """{"kind","id","revision","sha"}, plus "subfolder"/"file" when the spec names them."""
        ident = (self.spec.display or self.spec.id) if self.spec.kind == "local" else self.spec.id
        return {"kind": self.spec.kind, "id": ident, "revision": self.spec.revision, "sha": self.sha,
                **self.spec.placement()}

    def span(self, piece: Piece) -> tuple[int, int]:
        """Byte range [begin, end) of `piece` in its tensor's file (begin == end when empty)."""
        info = self.tensors[piece.name]
        begin = info.offset + piece.start * info.itemsize
        return begin, begin + max(0, piece.stop - piece.start) * info.itemsize

    @abstractmethod
    def read_piece(self, piece: Piece) -> torch.Tensor:
        """The piece's elements as a 1-D CPU tensor of the tensor's dtype (may be a view)."""

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        return self.read_piece(Piece(name, 0, info.numel)).reshape(info.shape)

    @abstractmethod
    def iter_pieces(self, pieces: Sequence[Piece]) -> Iterator[tuple[Piece, torch.Tensor]]:
        """The pieces in order, read ahead within `prefetch_bytes` so I/O overlaps compute.

        The consumer calls `release(piece)` once it no longer needs the piece's tensor.
        """

    def release(self, piece: Piece) -> None:
        """The caller is done with `piece`: drop whatever memory it pinned."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- local directories ------------------------------------------------------------------

# Content ids of local files, by what stat says about them (`_stat_key`): in this process,
# and on disk across processes (`_digest_cache_dir`), so a checkpoint is read in full to
# name it once, not before every analysis. The stat key is the trade-off: a file rewritten
# in place with the same size is seen as changed by its ctime, which no user can set back
# (an mtime-preserving rewrite, `touch -d` / os.utime, still moves it); what the key cannot
# see is a rewrite within one timestamp tick of the stat that hashed it, so a file changed
# in the last `_SETTLE_NS` is hashed but never remembered ("racy git"), and a clock moved
# backwards. SUBNETSCOPE_DIGEST_CACHE=off turns the disk cache off.
_FILE_DIGESTS: dict[tuple, str] = {}
_SETTLE_NS = 2_000_000_000
_DIGEST_VERSION = "blake3-1"


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _digest_cache_dir() -> Path | None:
    """SUBNETSCOPE_DIGEST_CACHE (a directory, or off), else $XDG_CACHE_HOME/subnetscope/digests."""
    env = os.environ.get("SUBNETSCOPE_DIGEST_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "false", "no") else Path(env).expanduser()
    try:
        root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    except RuntimeError:  # no home directory: no disk cache
        return None
    return Path(root) / "subnetscope" / "digests"


def _digest_entry(key: tuple) -> Path | None:
    folder = _digest_cache_dir()
    if folder is None:
        return None
    name = hashlib.sha256(json.dumps([_DIGEST_VERSION, *key]).encode()).hexdigest()[:40]
    return folder / name[:2] / f"{name}.json"


def _cached_digest(key: tuple) -> str | None:
    entry = _digest_entry(key)
    try:
        data = json.loads(entry.read_text()) if entry is not None else None
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("key") == [_DIGEST_VERSION, *key] and isinstance(data.get("digest"), str):
        return data["digest"]
    return None


def _remember_digest(key: tuple, digest: str) -> None:
    entry = _digest_entry(key)
    if entry is None:
        return
    try:  # best effort: a read-only or full cache only costs a re-hash next time
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"key": [_DIGEST_VERSION, *key], "digest": digest}))
        os.replace(tmp, entry)
    except OSError:
        pass


def _file_digest(path: Path) -> str:
    """BLAKE3 of the file's bytes: a content id as safe as sha256, several times faster
    (SIMD, and threads on large updates), read through one reused buffer so the
    hashing adds no resident memory. Remembered by stat key (see above)."""
    key = _stat_key(path)
    if key in _FILE_DIGESTS:
        return _FILE_DIGESTS[key]
    digest = _cached_digest(key)
    if digest is None:
        started = time.time_ns()
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        buffer = bytearray(32 << 20)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                h.update(view[:n])
        digest = h.hexdigest()
        settled = max(key[4], key[5]) < started - _SETTLE_NS
        if not settled or _stat_key(path) != key:
            return digest  # changed lately or while read: not remembered anywhere
        _remember_digest(key, digest)
    _FILE_DIGESTS[key] = digest
    return digest


# index.json and config.json are read whole; anything bigger is not what it claims to be.
SMALL_FILE_LIMIT = 64 << 20
# A directory is listed this many levels below the chosen folder (enough for "unet/" candidates
# and shards beside an index), and at most this many entries, so a huge tree costs little.
_LIST_DEPTH = 3
_LIST_LIMIT = 100_000


def list_files(directory: Path, folder: str | None = None, file: str | None = None) -> list[str]:
    """Files under directory/folder (a few levels deep, hidden entries skipped), as POSIX paths
    relative to `directory`: what `layout.select_weights` chooses from."""
    top = directory / folder if folder else directory
    out: list[str] = []
    roots = [top] + ([(top / file).parent] if file else [])
    for root in roots:
        if not root.is_dir():
            continue
        base_depth = len(root.relative_to(directory).parts)
        for current, dirs, files in os.walk(root):
            here = Path(current).relative_to(directory)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if len(here.parts) - base_depth < _LIST_DEPTH - 1 else []
            out.extend((here / f).as_posix() for f in files if not f.startswith("."))
            if len(out) > _LIST_LIMIT:
                break
    return sorted(set(out))


def read_small_json(path: Path, where: str, shown: str):
    """A JSON file of a checkpoint, refused as malformed when it is not JSON or too large."""
    try:
        if path.stat().st_size > SMALL_FILE_LIMIT:
            raise EngineError("malformed", f"{where}: {shown} is larger than {SMALL_FILE_LIMIT >> 20} MiB; not a metadata file.")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EngineError("malformed", f"{where}: {shown} is not valid JSON.") from None
    except OSError:
        raise EngineError("malformed", f"{where}: {shown} cannot be read.") from None


def safetensors_files(directory: Path, label: str, *, subfolder: str | None = None, file: str | None = None) -> list[str]:
    """Weight files of a checkpoint directory by the shared rule (layout.py); pickles are never read."""
    return select_weights(
        list_files(directory, subfolder, file),
        lambda name: read_small_json(directory / name, label, name),
        where=label, subfolder=subfolder, file=file,
    )


class LocalSource(Source):
    """A directory (or a subfolder of it) with weights chosen by the rule of layout.py:
    model.safetensors or the shards of model.safetensors.index.json, or the file named.

    Files are memory-mapped; pages of a piece are asked for ahead of use and dropped
    after it, so resident memory stays near the prefetch budget, not the model size.
    """

    def __init__(self, spec: SourceSpec, *, sha: str | None = None):
        """`sha` names the content when the caller knows it (a Hub snapshot's commit), sparing the hashing."""
        self.spec = spec
        directory = Path(spec.id)
        if not directory.is_dir():
            raise EngineError("not_found", f"Local checkpoint {spec.label} does not exist (no such directory).")
        self.directory = directory
        if spec.subfolder and not (directory / spec.subfolder).is_dir():
            raise EngineError("not_found", f"Local checkpoint {spec.label}: no subfolder {spec.subfolder}/ in it.")
        self.files = safetensors_files(directory, spec.label, subfolder=spec.subfolder, file=spec.file)
        self.tensors = {}
        self._maps: dict[str, mmap.mmap] = {}
        digests = []
        for fname in self.files:
            path = directory / fname
            if not path.is_file():
                raise EngineError("malformed", f"{spec.label}: shard {fname} listed in the index is missing.")
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                n = header_length(f.read(8), fname, size)
                infos, _ = parse_header(f.read(n), fname, size)
                if size > 0:
                    self._maps[fname] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            for name, info in infos.items():
                if name in self.tensors:
                    raise EngineError("malformed", f"{spec.label}: tensor {name} appears in two files.")
                self.tensors[name] = info
            if sha is None:
                digests.append(f"{fname}:{_file_digest(path)}")
        self.sha = sha or hashlib.sha256("\n".join(digests).encode()).hexdigest()
        config = directory / (spec.subfolder or "") / "config.json"
        try:
            self.config = json.loads(config.read_text()) if config.is_file() else None
        except ValueError:
            self.config = None

    def read_piece(self, piece: Piece) -> torch.Tensor:
        info = self.tensors[piece.name]
        if piece.stop <= piece.start:
            return bytes_to_tensor(b"", info, 0, 0)
        begin, end = self.span(piece)
        self._count(end - begin)
        return bytes_to_tensor(memoryview(self._maps[info.file])[begin:end], info, piece.start, piece.stop)

    def iter_pieces(self, pieces: Sequence[Piece]) -> Iterator[tuple[Piece, torch.Tensor]]:
        # The kernel page-faults the mapping itself; the OS reads ahead what we announce.
        budget, ahead, announced = self.prefetch_bytes, 0, 0
        for piece in pieces:
            while announced < len(pieces) and ahead < budget:
                nxt = pieces[announced]
                if nxt.stop > nxt.start:
                    self._advise(nxt, mmap.MADV_WILLNEED)
                ahead += (nxt.stop - nxt.start) * self.tensors[nxt.name].itemsize
                announced += 1
            yield piece, self.read_piece(piece)
            ahead -= (piece.stop - piece.start) * self.tensors[piece.name].itemsize

    def release(self, piece: Piece) -> None:
        if piece.stop > piece.start:
            self._advise(piece, mmap.MADV_DONTNEED)

    def _advise(self, piece: Piece, advice: int) -> None:
        mm = self._maps[self.tensors[piece.name].file]
        begin, end = self.span(piece)
        page = mmap.PAGESIZE
        start = begin - begin % page
        try:
            mm.madvise(advice, start, end - start)
        except (OSError, ValueError):  # advice is a hint; a platform without it still works
            pass

    def close(self) -> None:
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a tensor still views it; the OS unmaps at exit
                pass
        self._maps.clear()
