"""Sources that read a checkpoint's tensors lazily, and the parts every kind shares.

A Source knows every tensor of a checkpoint from the safetensors headers alone
(no weight bytes), and reads element ranges of a tensor on demand, so an analysis
streams pieces of bounded size whatever the model size. What the user typed is a
SourceSpec (`spec.py`); the local-directory source is in `local.py`, the Hub source in
`hub.py` (its HTTP policy in `hub_http.py`), which file holds the weights is decided in
`layout.py` (for both), and `open.py` dispatches a spec to its source. This module
imports none of them but `layout` and `spec`.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.engine.checkpoints.layout import select_weights
from worker.engine.checkpoints.safetensors_format import TensorInfo
from worker.engine.checkpoints.spec import SourceSpec
from worker.engine.errors import EngineError


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of the flattened tensor `name`."""

    name: str
    start: int
    stop: int


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
