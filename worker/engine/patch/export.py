"""Write a patch from a base and a finetuned checkpoint, streaming tensor by tensor.

For every tensor of the tuned checkpoint, in file and offset order, the plan (`plan_tensor`)
picks what it is stored against: the base tensor of the same name (same dtype; a resized
first dimension compares the common leading rows, the other rows are stored whole), the base
rounded to the tuned dtype (torch's round to nearest even) when only the float dtype differs,
or nothing (carried whole: absent from the base, other shapes, integer dtype changes). The
base's raw bytes are hashed per tensor (BLAKE3) so apply can refuse another base; the tuned
files are hashed whole so apply can prove its output bit for bit. Memory: a few chunks of
CHUNK elements, whatever the model size.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import blake3
import numpy as np
import torch

from worker.engine.checkpoints.layout import PICKLE_SUFFIXES, SAFETENSORS, is_index
from worker.engine.checkpoints.safetensors_format import RAW_INT, TensorInfo, header_length
from worker.engine.checkpoints.sources import SMALL_FILE_LIMIT, Piece, Source
from worker.engine.errors import EngineError
from worker.engine.pairing.names import match_names
from worker.engine.patch import codec
from worker.engine.patch.format import PatchWriter

CHUNK = 1 << 23  # elements per chunk: 16 MiB of bf16


@dataclass(frozen=True)
class TensorPlan:
    tuned: TensorInfo
    base: TensorInfo | None  # None: carried whole
    cast: bool  # base rounded to the tuned dtype first
    common: int  # leading elements stored against the base; the rest are whole

    def record(self) -> dict:
        t, b = self.tuned, self.base
        return {"name": t.name, "file": t.file, "dtype": t.dtype, "shape": list(t.shape), "offset": t.offset,
                "nbytes": t.nbytes, "cast": self.cast, "common": self.common,
                "base": None if b is None else {"name": b.name, "dtype": b.dtype, "shape": list(b.shape)}}


def plan_tensor(tuned: TensorInfo, base: TensorInfo | None) -> TensorPlan:
    whole = TensorPlan(tuned, None, False, 0)
    if base is None:
        return whole
    if base.dtype != tuned.dtype:
        if not (_is_float(base) and _is_float(tuned)):
            return whole
        cast = True
    else:
        cast = False
    if base.shape == tuned.shape:
        common = tuned.numel
    elif len(base.shape) == len(tuned.shape) >= 1 and base.shape[1:] == tuned.shape[1:]:
        common = min(base.shape[0], tuned.shape[0]) * math.prod(tuned.shape[1:])
    else:
        return whole
    return TensorPlan(tuned, base, cast, common) if common > 0 else whole


def _is_float(info: TensorInfo) -> bool:
    return info.torch_dtype is not None and info.torch_dtype.is_floating_point


def bits(piece: torch.Tensor, info: TensorInfo) -> np.ndarray:
    """A piece's elements as unsigned integers of the element width (a view)."""
    raw = piece if info.torch_dtype is None else piece.view(RAW_INT[info.itemsize])
    return raw.numpy().view(codec.UINT[info.itemsize])


def cast_bits(piece: torch.Tensor, base: TensorInfo, tuned: TensorInfo) -> np.ndarray:
    """Base elements rounded to the tuned dtype, as the tuned width's unsigned integers."""
    return bits(piece.to(tuned.torch_dtype), tuned)


def _pieces(name: str, numel: int, common: int) -> list[Piece]:
    out = [Piece(name, i, min(i + CHUNK, common)) for i in range(0, common, CHUNK)]
    return out + [Piece(name, i, min(i + CHUNK, numel)) for i in range(common, numel, CHUNK)]


# --- the tuned checkpoint's files ----------------------------------------------------------

def stored(src: Source, role: str) -> Source:
    """The checkpoint as stored: a patch rebuilds files, so fp8 blocks, MXFP4 and fused experts are
    taken as their stored tensors (quantized.py's view unwrapped), and a LoRA adapter, which has
    no weight files of its merged model, is refused."""
    inner = src.__dict__.get("inner")  # quantized.DequantizedSource
    src = inner if inner is not None else src
    if type(src).__name__ not in ("LocalSource", "HubSource"):
        raise EngineError("bad_request", f"The {role} is a LoRA adapter (or another computed model): a patch rebuilds "
                                         "stored checkpoint files; export against the merged model saved as files.")
    return src


def _read_range(src: Source, file: str, begin: int, end: int) -> bytes:
    """Bytes [begin, end) of one of the checkpoint's files (local: read; Hub: a range request)."""
    local = getattr(src, "_local", None) or src
    directory = getattr(local, "directory", None)
    if directory is not None:
        with open(Path(directory) / file, "rb") as f:
            f.seek(begin)
            return f.read(end - begin)
    data, _ = src._fetch(file, begin, end)  # HubSource: a range request, retried like weight reads
    return bytes(data)


def raw_header(src: Source, file: str) -> bytes:
    """The 8-byte length and JSON header of a weight file, byte for byte."""
    prefix = _read_range(src, file, 0, 8)
    n = header_length(prefix, file, 8 + (1 << 62))
    return prefix + _read_range(src, file, 8, 8 + n)


def carried_files(src: Source) -> dict[str, bytes]:
    """Small files beside the weights (index, config, tokenizer, ...) by checkpoint-relative path.
    Local checkpoints only; a Hub checkpoint is named by its commit sha in the manifest instead,
    except its index, which the shard layout needs."""
    directory = getattr(getattr(src, "_local", None) or src, "directory", None)
    folder = PurePosixPath(src.files[0]).parent.as_posix() if src.files else "."
    prefix = "" if folder == "." else folder + "/"
    out: dict[str, bytes] = {}
    if directory is None:
        index = prefix + "model.safetensors.index.json"
        if len(src.files) > 1:
            try:
                data, _ = src._fetch(index)
                out[index] = bytes(data)
            except EngineError:
                pass
        return out
    weights = set(src.files)
    for entry in sorted(os.scandir(Path(directory) / folder), key=lambda e: e.name):
        rel = prefix + entry.name
        if (not entry.is_file() or entry.name.startswith(".") or rel in weights
                or entry.name.endswith(PICKLE_SUFFIXES)
                or (entry.name.endswith(SAFETENSORS) and not is_index(entry.name))):
            continue
        if entry.stat().st_size <= SMALL_FILE_LIMIT:
            out[rel] = Path(entry.path).read_bytes()
    return out


# --- export ----------------------------------------------------------------------------------

def export_patch(base: Source, tuned: Source, out: Path | str, *,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the patch that rebuilds `tuned` from `base` to `out`; a summary dict.

    The summary: patch_bytes, tuned_bytes, share, changed, tensors, seconds.
    """
    started = time.perf_counter()
    out = Path(out)
    base, tuned = stored(base, "base"), stored(tuned, "finetuned model")
    order = sorted(tuned.tensors.values(), key=lambda t: (tuned.files.index(t.file), t.offset))
    headers = {f: raw_header(tuned, f) for f in tuned.files}
    file_hash = {f: blake3.blake3(h, max_threads=blake3.blake3.AUTO) for f, h in headers.items()}
    file_size = {f: len(h) for f, h in headers.items()}
    total = sum(t.nbytes for t in order)
    done = 0
    writer = PatchWriter(out)
    records = []
    changed_total = 0
    try:
        for f, h in headers.items():
            writer.add(f"h/{f}", codec.compress(h))
        carried = carried_files(tuned)
        for path, data in carried.items():
            writer.add(f"f/{path}", codec.compress(data))
        partner = base_names(base, tuned)
        for info in order:
            plan = plan_tensor(info, base.tensors.get(partner.get(info.name, info.name)))
            record = plan.record()
            writer.begin(f"t/{info.name}")
            chunks, changed, base_digest = _export_tensor(plan, base, tuned, writer, file_hash[info.file])
            record.update(payload=f"t/{info.name}", chunks=chunks, changed=changed, payload_bytes=writer.end())
            if plan.base is not None:
                record["base"]["blake3"] = base_digest
            file_size[info.file] += info.nbytes
            records.append(record)
            changed_total += changed
            done += info.nbytes
            if progress is not None:
                progress(done, total)
        manifest = {
            "base": base.describe(), "tuned": tuned.describe(),
            "files": [{"path": f, "size": file_size[f], "blake3": file_hash[f].hexdigest(),
                       "header": f"h/{f}", "header_bytes": len(headers[f])} for f in tuned.files],
            "carried": [{"path": p, "size": len(d), "payload": f"f/{p}"} for p, d in carried.items()],
            "tensors": records,
            "tuned_bytes": sum(file_size.values()),
        }
        size = writer.finish(manifest)
    except BaseException:
        writer.abort()
        raise
    tuned_bytes = manifest["tuned_bytes"]
    return {"patch_bytes": size, "tuned_bytes": tuned_bytes, "share": size / tuned_bytes if tuned_bytes else 0.0,
            "changed": changed_total, "tensors": len(records), "seconds": time.perf_counter() - started}


def base_names(base: Source, tuned: Source) -> dict[str, str]:
    """tuned name -> base name where a one-sided prefix differs (pairing/names.py); others match as they are."""
    match = match_names(base.tensors, tuned.tensors)
    return {t: b for b, t in match.common.values() if b != t and t not in base.tensors}


def _export_tensor(plan: TensorPlan, base: Source, tuned: Source, writer: PatchWriter, file_hash) -> tuple:
    t, b = plan.tuned, plan.base
    t_pieces = _pieces(t.name, t.numel, plan.common)
    b_pieces = _pieces(b.name, b.numel, plan.common) if b is not None else []
    n_common = sum(1 for p in t_pieces if p.stop <= plan.common)
    base_hash = blake3.blake3(max_threads=blake3.blake3.AUTO)
    base_iter = base.iter_pieces(b_pieces) if b_pieces else iter(())
    chunks, changed = [], 0
    for i, (tp, tv) in enumerate(tuned.iter_pieces(t_pieces)):
        t_bits = bits(tv, t)
        file_hash.update(t_bits.view(np.uint8))
        if i < n_common:
            bp, bv = next(base_iter)
            base_hash.update(bits(bv, b).view(np.uint8))
            b_bits = cast_bits(bv, b, t) if plan.cast else bits(bv, b)
            k, mask, values = codec.encode_delta(b_bits, t_bits)
            base.release(bp)
            writer.write(mask)
            writer.write(values)
            chunks.append([tp.stop - tp.start, k, len(mask), len(values)])
            changed += k
        else:
            frame = codec.encode_whole(t_bits.view(np.uint8))
            writer.write(frame)
            chunks.append([tp.stop - tp.start, -1, len(frame), 0])
            changed += tp.stop - tp.start
        tuned.release(tp)
    for bp, bv in base_iter:  # base rows beyond the common ones: hashed only
        base_hash.update(bits(bv, b).view(np.uint8))
        base.release(bp)
    return chunks, changed, base_hash.hexdigest() if b is not None else None


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2)
