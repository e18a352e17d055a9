"""Changed-element masks as packed bits in a safetensors file.

One uint8 entry per compared tensor, `numpy.packbits(mask.flatten(), bitorder="little")`,
so a 7B model's mask is ~0.9 GB instead of 7 GB of bools. Parts are written per
tensor while the analysis runs (a resumed analysis keeps finished parts), then
stitched into one file without holding more than one part in memory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from worker.engine.errors import EngineError
from worker.engine.safetensors_format import header_length, parse_header

FORMAT = "subnetscope-mask"
MASKS_FILE = "masks.safetensors"


def _part_path(parts: Path, name: str) -> Path:
    return parts / f"{name.replace('/', '_')}.bits"


class MaskPart:
    """Packs one tensor's mask pieces into a part file; pieces need not be multiples of 8."""

    def __init__(self, parts: Path, name: str):
        self.path = _part_path(parts, name)
        self._tmp = self.path.with_suffix(".partial")
        try:
            parts.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "wb")
        except OSError as exc:
            raise _disk_error(exc) from None
        self._carry = np.zeros(0, dtype=bool)

    def add(self, mask: torch.Tensor) -> None:
        bits = np.concatenate([self._carry, mask.numpy()]) if self._carry.size else mask.numpy()
        whole = bits.size - bits.size % 8
        try:  # a piece's bits exceed the write buffer, so a full disk shows up here, not only at close
            self._file.write(np.packbits(bits[:whole], bitorder="little").tobytes())
        except OSError as exc:
            with contextlib.suppress(OSError):  # flushing the rest fails the same way
                self._file.close()
            raise _disk_error(exc) from None
        self._carry = bits[whole:].copy()

    def close(self) -> None:
        try:
            if self._carry.size:
                self._file.write(np.packbits(self._carry, bitorder="little").tobytes())
            self._file.close()
        except OSError as exc:
            raise _disk_error(exc) from None
        self._tmp.replace(self.path)


def _disk_error(exc: OSError) -> EngineError:
    return EngineError("disk_full", f"Could not write the mask files ({exc.strerror or exc}); is the disk full?")


def part_is_complete(parts: Path, name: str, numel: int) -> bool:
    path = _part_path(parts, name)
    return path.is_file() and path.stat().st_size == (numel + 7) // 8


def assemble(masks_dir: Path, shapes: dict[str, list[int]], metadata: dict[str, str]) -> Path:
    """Stitch the parts of `shapes` (in order) into masks_dir/masks.safetensors."""
    parts = masks_dir / "parts"
    header: dict = {"__metadata__": {**metadata, "format": FORMAT, "shapes": json.dumps(shapes)}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = (int(np.prod(shape)) + 7) // 8
        header[name] = {"dtype": "U8", "shape": [nbytes], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    target = masks_dir / MASKS_FILE
    tmp = target.with_suffix(".partial")
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(blob)) + blob)
            for name in shapes:
                with open(_part_path(parts, name), "rb") as part:
                    shutil.copyfileobj(part, out, 16 << 20)
        tmp.replace(target)
    except OSError as exc:
        raise _disk_error(exc) from None
    shutil.rmtree(parts, ignore_errors=True)
    return target


def read_metadata(path: Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """(`__metadata__`, tensor name -> original shape) of a mask file, from its header only."""
    with open(path, "rb") as f:
        size = path.stat().st_size
        n = header_length(f.read(8), path.name, size)
        _, metadata = parse_header(f.read(n), path.name, size)
    if metadata.get("format") != FORMAT:
        raise EngineError("malformed", f"{path.name} is not a Subnetscope mask file.")
    return metadata, json.loads(metadata["shapes"])


def iter_packed(path: Path, names: list[str]):
    """(name, packed uint8 numpy array) for each name, read one tensor at a time."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        for name in names:
            yield name, f.get_tensor(name)


def unpack(packed: np.ndarray, shape: list[int]) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed, count=n, bitorder="little").astype(bool)).reshape(shape)


def load_masks(path: Path | str) -> dict[str, torch.Tensor]:
    """Every mask as a torch bool tensor of the compared shape, e.g. for gradient masking."""
    path = Path(path)
    _, shapes = read_metadata(path)
    return {name: unpack(packed, shapes[name]) for name, packed in iter_packed(path, list(shapes))}
