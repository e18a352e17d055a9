"""Where checkpoints come from: a parsed id, and Sources that read tensors lazily.

A Source knows every tensor of a checkpoint from the safetensors headers alone
(no weight bytes), and reads element ranges of a tensor on demand, so an analysis
streams pieces of bounded size whatever the model size. The Hub source lives in
`hub.py`; this module holds the shared parts and the local-directory source.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import queue
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import torch

from worker.engine.errors import EngineError
from worker.engine.safetensors_format import TensorInfo, bytes_to_tensor, header_length, parse_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"

# huggingface_hub's own rule for repo ids (validate_repo_id), plus an optional org.
_REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")
_REVISION = re.compile(r"^[\w\-./]{1,200}$")


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "hub" | "local"
    id: str  # "org/name" for hub; absolute resolved path for local
    revision: str | None = None  # hub only; None means "main"
    display: str = ""  # what the user typed, e.g. "local:demo/base" (never a server path)

    @property
    def label(self) -> str:
        if self.kind == "hub":
            return f"{self.id}@{self.revision}" if self.revision else self.id
        return self.display or self.id


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
) -> SourceSpec:
    """Turn what a user typed into a SourceSpec, refusing anything unsafe or malformed.

    "org/name" or "org/name@rev" is a Hub repo; "local:rel/dir" is a directory under
    `local_root`. Other paths ("/abs", "./dir", "~/dir", an existing directory) are
    accepted only with `allow_any_path` (the CLI); the server passes False, and then
    a path must resolve (symlinks followed) inside `local_root`.
    """
    text = (text or "").strip()
    if not text:
        raise EngineError("bad_id", "A model id is required, e.g. 'org/name' or 'local:demo/base'.")
    if text.startswith("local:"):
        return _local_spec(text[len("local:") :], text, local_root, allow_any_path, relative_to_root=True)
    looks_like_path = text.startswith(("/", "./", "../", "~")) or (allow_any_path and Path(text).expanduser().is_dir())
    if looks_like_path:
        return _local_spec(text, text, local_root, allow_any_path, relative_to_root=False)
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
    return SourceSpec("hub", repo, rev, display=text)


def _local_spec(path_text: str, display: str, local_root: Path | None, allow_any_path: bool, *, relative_to_root: bool) -> SourceSpec:
    raw = Path(path_text).expanduser()
    if relative_to_root and not raw.is_absolute():
        if local_root is None:
            raise EngineError("path_forbidden", "Local checkpoints are not enabled on this server (no local root configured).")
        raw = local_root / raw
    resolved = raw.resolve()
    if not allow_any_path:
        root = (local_root or Path("/nonexistent")).resolve()
        if not resolved.is_relative_to(root):
            raise EngineError(
                "path_forbidden",
                f"Local path {display!r} is outside the server's local root; only checkpoints under the "
                "configured root (SUBNETSCOPE_LOCAL_ROOT) are allowed.",
            )
    return SourceSpec("local", str(resolved), None, display=display)


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

    def describe(self) -> dict:
        return {"kind": self.spec.kind, "id": self.spec.label if self.spec.kind == "local" else self.spec.id,
                "revision": self.spec.revision, "sha": self.sha}

    @abstractmethod
    def read_piece(self, piece: Piece) -> torch.Tensor:
        """The piece's elements as a 1-D CPU tensor of the tensor's dtype (may be a view)."""

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        return self.read_piece(Piece(name, 0, info.numel)).reshape(info.shape)

    def iter_pieces(self, pieces: Sequence[Piece]) -> Iterator[tuple[Piece, torch.Tensor]]:
        """The pieces in order, read ahead on a background thread so I/O overlaps compute.

        The consumer calls `release(piece)` once it no longer needs the piece's tensor.
        """
        yield from _prefetched(self, pieces, self.prefetch_bytes)

    def release(self, piece: Piece) -> None:
        """The caller is done with `piece`: drop whatever memory it pinned."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _prefetched(source: Source, pieces: Sequence[Piece], budget: int) -> Iterator[tuple[Piece, torch.Tensor]]:
    """Run `source.read_piece` ahead of the consumer, holding at most `budget` unconsumed bytes."""
    done = object()
    slots = queue.Queue()
    in_flight = threading.Semaphore(max(1, budget >> 20))  # budget in MiB tickets
    stop = threading.Event()

    def tickets(piece: Piece) -> int:
        info = source.tensors[piece.name]
        return max(1, min(budget >> 20, ((piece.stop - piece.start) * info.itemsize) >> 20))

    def producer() -> None:
        try:
            for piece in pieces:
                for _ in range(tickets(piece)):
                    in_flight.acquire()
                if stop.is_set():
                    return
                slots.put((piece, source.read_piece(piece)))
            slots.put((done, None))
        except BaseException as exc:  # surfaced in the consumer's thread
            slots.put((exc, None))

    thread = threading.Thread(target=producer, name=f"prefetch-{source.spec.label}", daemon=True)
    thread.start()
    try:
        while True:
            piece, tensor = slots.get()
            if piece is done:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece, tensor
            for _ in range(tickets(piece)):
                in_flight.release()
    finally:
        stop.set()
        for _ in range(max(1, budget >> 20)):
            in_flight.release()


# --- local directories ------------------------------------------------------------------

# (path, size, mtime_ns, inode) -> sha256 of the file, so a checkpoint is hashed once per process.
_FILE_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    """BLAKE3 of the file's bytes: a content id as safe as sha256, several times faster
    (SIMD, and threads on large updates), read through one reused buffer so the
    hashing adds no resident memory."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _FILE_DIGESTS:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        buffer = bytearray(32 << 20)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                h.update(view[:n])
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def safetensors_files(directory: Path, label: str) -> list[str]:
    """Weight files of a checkpoint directory; pickle-only checkpoints are refused unread."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise EngineError("malformed", f"{label}: {INDEX_FILE} is not a valid index (no weight_map).") from None
        return sorted(set(weight_map.values()))
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise EngineError(
            "no_safetensors",
            f"{label} has only pickle weights ({', '.join(pickles[:3])}); Subnetscope never loads pickle files "
            "because they can run code. Convert the checkpoint to safetensors first.",
        )
    raise EngineError("no_safetensors", f"{label} contains no safetensors weights (*.safetensors).")


class LocalSource(Source):
    """A directory with model.safetensors or shards listed in model.safetensors.index.json.

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
        self.files = safetensors_files(directory, spec.label)
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
        config = directory / "config.json"
        try:
            self.config = json.loads(config.read_text()) if config.is_file() else None
        except ValueError:
            self.config = None

    def _span(self, piece: Piece) -> tuple[mmap.mmap, int, int]:
        info = self.tensors[piece.name]
        begin = info.offset + piece.start * info.itemsize
        return self._maps[info.file], begin, begin + (piece.stop - piece.start) * info.itemsize

    def read_piece(self, piece: Piece) -> torch.Tensor:
        info = self.tensors[piece.name]
        if piece.stop <= piece.start:
            return bytes_to_tensor(b"", info, 0, 0)
        mm, begin, end = self._span(piece)
        return bytes_to_tensor(memoryview(mm)[begin:end], info, piece.start, piece.stop)

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
        mm, begin, end = self._span(piece)
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


def open_source(spec: SourceSpec, *, token: str | None = None) -> Source:
    """Open a checkpoint: resolve it and read every header, but no weight bytes yet."""
    if spec.kind == "local":
        return LocalSource(spec)
    from worker.engine.hub import HubSource  # huggingface_hub is imported only when needed

    return HubSource(spec, token=token)
