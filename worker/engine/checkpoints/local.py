"""Checkpoints in a local directory: memory-mapped safetensors, named by a content digest.

A local checkpoint has no commit sha; its id is a digest of its weight files' bytes, cached
by what stat says about each file (see below), so an unchanged checkpoint is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import blake3
import torch

from worker.engine.checkpoints.safetensors_format import bytes_to_tensor, header_length, parse_header
from worker.engine.checkpoints.sources import Piece, Source, safetensors_files
from worker.engine.checkpoints.spec import SourceSpec
from worker.engine.errors import EngineError

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
