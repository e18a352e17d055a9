"""Strict reading of the safetensors header: every way a file can lie is refused here.

The format: u64 little-endian header length N, N bytes of JSON, then the data
section. Each tensor entry gives dtype, shape and [begin, end) offsets into the
data section. We check what the reference library checks (and a little more, so a
truncated download is caught from its size alone) before a single weight byte is
read, because the Hub path must refuse a bad file without downloading it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

from worker.engine.errors import EngineError

# The reference implementation refuses headers above 100 MB; so do we, before allocating.
MAX_HEADER_BYTES = 100_000_000

# safetensors dtype -> (bytes per element, torch dtype or None when not comparable)
DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    "BF16": (2, torch.bfloat16),
    "F16": (2, torch.float16),
    "F32": (4, torch.float32),
    "F64": (8, torch.float64),
    "F8_E4M3": (1, torch.float8_e4m3fn),
    "F8_E5M2": (1, torch.float8_e5m2),
    "I64": (8, None),
    "I32": (4, None),
    "I16": (2, None),
    "I8": (1, None),
    "U8": (1, None),
    "U16": (2, None),
    "U32": (4, None),
    "U64": (8, None),
    "BOOL": (1, None),
}

# Integer dtypes of the same width, for viewing raw bytes without a copy.
RAW_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: str  # shard file name within the checkpoint
    offset: int  # absolute byte offset of the tensor's data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype][1]


def header_length(prefix: bytes, file: str, file_size: int) -> int:
    """Length N of the JSON header, from the first 8 bytes, checked against the file size."""
    if len(prefix) < 8 or file_size < 8:
        raise EngineError("malformed", f"{file} is too short to be a safetensors file ({file_size} bytes).")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise EngineError(
            "malformed", f"{file}: header length {n} bytes is too large (limit {MAX_HEADER_BYTES}); not a safetensors file."
        )
    if 8 + n > file_size:
        raise EngineError(
            "malformed", f"{file}: header length {n} runs past the end of the file ({file_size} bytes); the file is truncated or not safetensors."
        )
    return n


def parse_header(raw: bytes, file: str, file_size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor entries and `__metadata__` of one file, validated against its size.

    `raw` is the JSON header (without the 8-byte length prefix).
    """
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError("malformed", f"{file}: the header is not valid JSON ({exc.__class__.__name__}).") from None
    if not isinstance(header, dict):
        raise EngineError("malformed", f"{file}: the header is JSON but not an object.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise EngineError("malformed", f"{file}: __metadata__ in the header is not an object.")
    data_start = 8 + len(raw)
    data_size = file_size - data_start
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _entry(name, entry, file, data_start)
        begin, end = entry["data_offsets"]
        if end > data_size:
            raise EngineError(
                "malformed",
                f"{file}: tensor {name} data_offsets [{begin}, {end}] run past the end of the data section "
                f"({data_size} bytes); the file is truncated (incomplete download?) or its offsets are out of range.",
            )
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise EngineError("malformed", f"{file}: tensor {name} data_offsets overlap another tensor's bytes.")
        if begin > position:
            raise EngineError("malformed", f"{file}: {begin - position} unused bytes before tensor {name} (offsets leave a gap).")
        position = end
    if position != data_size:
        raise EngineError(
            "malformed", f"{file}: {data_size - position} trailing bytes after the last tensor that no tensor accounts for."
        )
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _entry(name: str, entry, file: str, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise EngineError("malformed", f"{file}: header entry {name} lacks dtype, shape or data_offsets.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise EngineError("malformed", f"{file}: tensor {name} has unknown dtype {dtype!r}.")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise EngineError("malformed", f"{file}: tensor {name} has an invalid shape {shape!r}.")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise EngineError("malformed", f"{file}: tensor {name} has invalid data_offsets {offsets!r}.")
    nbytes = math.prod(shape) * DTYPES[dtype][0]
    if offsets[1] - offsets[0] != nbytes:
        raise EngineError(
            "malformed",
            f"{file}: tensor {name} data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} of "
            f"{dtype} needs {nbytes} bytes.",
        )
    return TensorInfo(name, dtype, tuple(shape), file, data_start + offsets[0], nbytes)


def bytes_to_tensor(buffer, info: TensorInfo, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Elements [start, stop) of the flattened tensor, viewed (not copied) from `buffer`.

    `buffer` holds exactly those elements' bytes (any object supporting the buffer protocol).
    """
    import warnings

    stop = info.numel if stop is None else stop
    raw_dtype = RAW_INT[info.itemsize]
    with warnings.catch_warnings():
        # mmap'd files are read-only buffers; the kernel never writes to its inputs.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(buffer, dtype=raw_dtype, count=stop - start) if stop > start else torch.empty(0, dtype=raw_dtype)
    target = info.torch_dtype
    return flat.view(target) if target is not None else flat
