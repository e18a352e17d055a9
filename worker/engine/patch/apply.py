"""Rebuild a tuned checkpoint from its base and a patch: verified, atomic, streaming.

Order of work, so that a wrong base or a bad patch costs nothing on disk:
1. the container is opened and its manifest checksum checked (format.PatchReader);
2. every base tensor the patch relies on is checked by name, dtype and shape, then by the
   BLAKE3 of its bytes, all before a byte is written; the first mismatch is refused by name;
3. files are rebuilt in a hidden sibling directory `.DIR.partial-<pid>`: each payload's
   checksum is checked before its first use, and each rebuilt file's BLAKE3 and size must
   equal the tuned file's (so the output is the tuned checkpoint bit for bit, or nothing);
4. the directory is renamed to DIR in one step. Any failure (disk full included) removes the
   partial directory; a killed apply leaves only the hidden one, removed by the next apply.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import numpy as np

from worker.engine.checkpoints.safetensors_format import DTYPES, TensorInfo
from worker.engine.checkpoints.sources import Piece, Source
from worker.engine.errors import EngineError
from worker.engine.patch import codec
from worker.engine.patch.export import CHUNK, _pieces, bits, cast_bits, stored
from worker.engine.patch.format import PatchReader

PARTIAL = ".partial-"


def _info(record: dict, side: dict | None = None) -> TensorInfo:
    d = side or record
    shape = tuple(d["shape"])
    return TensorInfo(record["name"], d["dtype"], shape, record.get("file", ""), record.get("offset", 0),
                      DTYPES[d["dtype"]][0] * math.prod(shape))


def check_base(base: Source, reader: PatchReader, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Refuse a base the patch was not made against (EngineError "incompatible", naming the first
    mismatched tensor); the number of base tensors verified."""
    base = stored(base, "base")
    made = reader.manifest["base"]
    made_label = f"{made.get('id')} (sha {str(made.get('sha'))[:12]})"
    relied = [r for r in reader.manifest["tensors"] if r["base"] is not None]
    for r in relied:
        want = r["base"]
        have = base.tensors.get(want["name"])
        if have is None:
            raise EngineError("incompatible", f"Wrong base: tensor {want['name']} is missing from it; this patch "
                                              f"was made against {made_label}.")
        if have.dtype != want["dtype"] or list(have.shape) != want["shape"]:
            raise EngineError("incompatible", f"Wrong base: tensor {want['name']} is {have.dtype} {list(have.shape)} "
                                              f"there, {want['dtype']} {want['shape']} in the base this patch was "
                                              f"made against ({made_label}).")
    total = sum(base.tensors[r["base"]["name"]].nbytes for r in relied)
    done = 0
    for r in relied:
        info = base.tensors[r["base"]["name"]]
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        pieces = _pieces(info.name, info.numel, 0)
        for piece, value in base.iter_pieces(pieces):
            h.update(bits(value, info).view(np.uint8))
            base.release(piece)
        if h.hexdigest() != r["base"]["blake3"]:
            raise EngineError("incompatible", f"Wrong base: tensor {info.name} differs from the one this patch was "
                                              f"made against ({made_label}); its content digest does not match.")
        done += info.nbytes
        if progress is not None:
            progress(done, total)
    return len(relied)


def _clean_stale(out_dir: Path) -> None:
    """Remove partial directories of applies that were killed (their process is gone)."""
    for entry in out_dir.parent.glob(f".{out_dir.name}{PARTIAL}*"):
        try:
            pid = int(entry.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            pass


def apply_patch(base: Source, patch: Path | str, out_dir: Path | str, *,
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Rebuild the tuned checkpoint of `patch` from `base` into `out_dir` (which must not exist or
    be empty). Returns {"files", "bytes", "tensors", "seconds"}."""
    started = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EngineError("bad_request", f"{out_dir} already exists and is not an empty directory; "
                                         "choose a new output directory.")
    base = stored(base, "base")
    reader = PatchReader(patch)
    try:
        check_base(base, reader, progress=(lambda d, t: progress("verify", d, t)) if progress else None)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(out_dir)
        partial = out_dir.parent / f".{out_dir.name}{PARTIAL}{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            written = _rebuild(base, reader, partial, progress)
            if out_dir.exists():
                out_dir.rmdir()
            os.rename(partial, out_dir)
            _fsync_dir(out_dir.parent)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise EngineError("disk_full", f"Disk full while writing {out_dir.name}; nothing was left "
                                               "behind. Free space and apply again.") from None
            raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        reader.close()
    m = reader.manifest
    return {"files": len(m["files"]) + len(m["carried"]), "bytes": written, "tensors": len(m["tensors"]),
            "seconds": time.perf_counter() - started}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe_path(root: Path, rel: str) -> Path:
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()) or rel.startswith("/"):
        raise EngineError("malformed", f"Patch names a file outside its directory: {rel!r}.")
    return target


def _rebuild(base: Source, reader: PatchReader, partial: Path,
             progress: Callable[[str, int, int], None] | None) -> int:
    m = reader.manifest
    partial.mkdir(parents=True)
    by_file: dict[str, list[dict]] = {}
    for r in m["tensors"]:
        by_file.setdefault(r["file"], []).append(r)
    total = sum(r["nbytes"] for r in m["tensors"])
    done = written = 0
    for entry in m["files"]:
        path = _safe_path(partial, entry["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open(path, "wb") as f:
            header = codec.decode_whole(reader.payload(entry["header"]), entry["header_bytes"])
            f.write(header)
            h.update(header)
            position = len(header)
            for r in sorted(by_file.get(entry["path"], []), key=lambda r: r["offset"]):
                if r["offset"] != position:
                    raise EngineError("malformed", f"Patch layout of {entry['path']} leaves a gap before {r['name']}.")
                for block in _tensor_blocks(base, reader, r):
                    f.write(block)
                    h.update(block)
                    position += len(block)
                done += r["nbytes"]
                if progress is not None:
                    progress("write", done, total)
            f.flush()
            os.fsync(f.fileno())
        if position != entry["size"] or h.hexdigest() != entry["blake3"]:
            raise EngineError("malformed", f"Rebuilt {entry['path']} does not match the tuned file the patch "
                                           "was made from; the patch is corrupted.")
        written += position
    for c in m["carried"]:
        path = _safe_path(partial, c["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        data = codec.decode_whole(reader.payload(c["payload"]), c["size"])
        path.write_bytes(data)
        written += len(data)
    return written


def _tensor_blocks(base: Source, reader: PatchReader, r: dict):
    """The rebuilt bytes of one tensor, chunk by chunk."""
    t = _info(r)
    payload = reader.payload(r["payload"])
    chunks = r["chunks"]
    if sum(c[0] for c in chunks) != t.numel or sum(c[2] + c[3] for c in chunks) != len(payload):
        raise EngineError("malformed", f"Patch record of {r['name']} does not add up; the patch is corrupted.")
    b = base.tensors[r["base"]["name"]] if r["base"] is not None else None
    common = r["common"]
    b_pieces = [p for p in _pieces(b.name, b.numel, common) if p.stop <= common] if b is not None else []
    base_iter = base.iter_pieces(b_pieces) if b_pieces else iter(())
    at = start = 0
    try:
        for n, k, a, size_b in chunks:
            frames = payload[at:at + a], payload[at + a:at + a + size_b]
            at += a + size_b
            if k < 0:
                yield codec.decode_whole(frames[0], n * t.itemsize)
            else:
                bp, bv = next(base_iter)
                if bp.stop - bp.start != n or bp.start != start:
                    raise EngineError("malformed", f"Patch chunks of {r['name']} do not follow the base's.")
                b_bits = cast_bits(bv, b, t) if r["cast"] else bits(bv, b)
                out = codec.decode_delta(b_bits, k, frames[0], frames[1])
                base.release(bp)
                yield out.view(np.uint8)
            start += n
    except ValueError as exc:
        raise EngineError("malformed", f"Patch data of {r['name']} cannot be decoded ({exc}); "
                                       "the patch is corrupted.") from None


def verify_patch(patch: Path | str, base: Source | None = None) -> dict:
    """Check the container (manifest checksum, every payload's checksum, chunk tables) and, with
    `base`, that the base is the one the patch was made against."""
    reader = PatchReader(patch, check_all=True)
    try:
        m = reader.manifest
        for r in m["tensors"]:
            t = _info(r)
            if sum(c[0] for c in r["chunks"]) != t.numel or \
                    sum(c[2] + c[3] for c in r["chunks"]) != reader.tensors[r["payload"]].nbytes:
                raise EngineError("malformed", f"Patch record of {r['name']} does not add up; the patch is corrupted.")
        verified = check_base(base, reader) if base is not None else None
    finally:
        reader.close()
    return {"patch_bytes": reader.size, "tuned_bytes": m["tuned_bytes"], "tensors": len(m["tensors"]),
            "files": [f["path"] for f in m["files"]], "carried": [c["path"] for c in m["carried"]],
            "base": m["base"], "tuned": m["tuned"], "base_tensors_verified": verified}


__all__ = ["apply_patch", "check_base", "verify_patch", "CHUNK", "Piece"]
