"""The patch container: a safetensors file any safetensors reader can open.

Every payload is a 1-D U8 tensor; `__metadata__` holds three strings:
  format = "subnetscope-patch", version = "1",
  manifest = JSON (below), manifest_blake3 = BLAKE3 of the manifest's UTF-8 bytes.
The manifest records each payload's BLAKE3, so a flipped bit anywhere is found before use;
a truncated file fails the safetensors size checks. Manifest fields are listed in
docs/PATCHES.md. Writing spools payloads to a temporary file (their sizes and digests must
be in the header, which comes first) and renames the finished file into place.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import blake3

from worker.engine.checkpoints.safetensors_format import header_length, parse_header
from worker.engine.errors import EngineError

FORMAT = "subnetscope-patch"
VERSION = "1"


def digest(data) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


class PatchWriter:
    """Payloads appended one by one into a spool file; `finish(manifest)` writes the container."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.spool_path = self.out.with_name(f".{self.out.name}.{os.getpid()}.spool")
        self.spool = open(self.spool_path, "wb")
        self.entries: list[tuple[str, int]] = []
        self.digests: dict[str, str] = {}
        self.size = 0

    def begin(self, name: str) -> None:
        if name in self.digests:
            raise ValueError(f"payload {name} written twice")
        self._name, self._hash, self._n = name, blake3.blake3(), 0

    def write(self, frame) -> None:
        if len(frame):
            self.spool.write(frame)
            self._hash.update(frame)
            self._n += len(frame)

    def end(self) -> int:
        """Close the current payload; its size in bytes."""
        self.entries.append((self._name, self._n))
        self.digests[self._name] = self._hash.hexdigest()
        self.size += self._n
        return self._n

    def add(self, name: str, data) -> None:
        self.begin(name)
        self.write(data)
        self.end()

    def finish(self, manifest: dict) -> int:
        """Write header + spooled data to `out` atomically; the container's size in bytes."""
        manifest = {**manifest, "payloads": self.digests}
        text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
        header: dict = {"__metadata__": {"format": FORMAT, "version": VERSION, "manifest": text,
                                         "manifest_blake3": digest(text.encode())}}
        position = 0
        for name, n in self.entries:
            header[name] = {"dtype": "U8", "shape": [n], "data_offsets": [position, position + n]}
            position += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
        self.spool.close()
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f, open(self.spool_path, "rb") as spool:
                f.write(struct.pack("<Q", len(raw)))
                f.write(raw)
                while block := spool.read(16 << 20):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self.spool_path.unlink(missing_ok=True)
        return 8 + len(raw) + position

    def abort(self) -> None:
        try:
            self.spool.close()
        finally:
            self.spool_path.unlink(missing_ok=True)


class PatchReader:
    """An opened patch: its manifest and payloads (memory-mapped), checked on open.

    Refused (EngineError "malformed") when the file is not a patch, not this version, truncated,
    or its manifest checksum fails; `payload(name)` checks the payload's digest on first read.
    """

    def __init__(self, path: Path | str, *, check_all: bool = False):
        self.path = Path(path)
        shown = self.path.name
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise EngineError("not_found", f"Patch {shown} cannot be opened ({exc.strerror}).") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            n = header_length(f.read(8), shown, size)
            self.tensors, meta = parse_header(f.read(n), shown, size)
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if meta.get("format") != FORMAT:
            raise EngineError("malformed", f"{shown} is a safetensors file but not a Subnetscope patch.")
        if meta.get("version") != VERSION:
            raise EngineError("malformed", f"{shown} is patch format version {meta.get('version')!r}; this "
                                           f"Subnetscope reads version {VERSION}.")
        text = meta.get("manifest", "")
        if digest(text.encode()) != meta.get("manifest_blake3"):
            raise EngineError("malformed", f"{shown}: the manifest fails its checksum; the patch is corrupted.")
        self.manifest = json.loads(text)
        self.size = size
        self._checked: set[str] = set()
        missing = set(self.manifest["payloads"]) ^ set(self.tensors)
        if missing:
            raise EngineError("malformed", f"{shown}: payloads and manifest disagree ({sorted(missing)[0]}).")
        if check_all:
            for name in self.tensors:
                self.payload(name)

    def payload(self, name: str) -> memoryview:
        info = self.tensors[name]
        view = memoryview(self._map)[info.offset:info.offset + info.nbytes] if info.nbytes else memoryview(b"")
        if name not in self._checked:
            if digest(view) != self.manifest["payloads"][name]:
                raise EngineError("malformed", f"{self.path.name}: payload {name} fails its checksum; "
                                               "the patch is corrupted.")
            self._checked.add(name)
        return view

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass
            self._map = None
