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

from worker.engine.checkpoints.safetensors_format import header_length, parse_header
from worker.engine.errors import EngineError

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


DENSITY_BINS = 256
HIST_EDGES = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)  # shares of a row (column) changed, after "0 (untouched)"
_BLOCK_BITS = 1 << 24  # bits unpacked at once: 16 MB of bools whatever the tensor size


def _edges(n: int, bins: int) -> np.ndarray:
    """bins + 1 increasing integer edges splitting range(n) into near-equal runs."""
    return (np.arange(min(bins, n) + 1, dtype=np.int64) * n) // min(bins, n)


def density(path: Path | str, name: str, bins: int = DENSITY_BINS) -> dict:
    """Where one tensor's changed elements lie, streamed from the packed mask in row blocks.

    Rows and columns are binned to at most `bins` each (a 1-D tensor is one row); per bin
    cell the share of elements changed, plus histograms of the share changed per row and
    per column. Memory: one block of rows (~16 M bits) and the per-column counts.
    """
    from safetensors import safe_open

    path = Path(path)
    metadata, shapes = read_metadata(path)
    if name not in shapes:
        raise EngineError("not_found", f"No tensor {name!r} in this mask file.")
    shape = list(shapes[name])
    m, n = (shape[0], int(np.prod(shape[1:]))) if len(shape) >= 2 else (1, int(np.prod(shape)))
    row_edges, col_edges = _edges(m, bins), _edges(n, bins)
    grid = np.zeros((len(row_edges) - 1, len(col_edges) - 1), dtype=np.int64)
    row_counts = np.zeros(m, dtype=np.int64)
    col_counts = np.zeros(n, dtype=np.int64)
    if m and n:
        row_bin = np.searchsorted(row_edges, np.arange(m), side="right") - 1
        step = max(1, _BLOCK_BITS // n)
        with safe_open(str(path), framework="numpy") as f:
            packed = f.get_slice(name)
            for r0 in range(0, m, step):
                r1 = min(m, r0 + step)
                bit0, bit1 = r0 * n, r1 * n
                raw = packed[bit0 // 8: (bit1 + 7) // 8]
                bits = np.unpackbits(raw, bitorder="little")[bit0 % 8: bit0 % 8 + (bit1 - bit0)]
                block = bits.reshape(r1 - r0, n)  # (rows of this block, n) 0/1
                per_col_bin = np.add.reduceat(block, col_edges[:-1], axis=1, dtype=np.int64)  # (rows, col bins)
                np.add.at(grid, row_bin[r0:r1], per_col_bin)
                row_counts[r0:r1] = block.sum(axis=1, dtype=np.int64)
                col_counts += block.sum(axis=0, dtype=np.int64)
    cells = np.outer(np.diff(row_edges), np.diff(col_edges))
    share = np.divide(grid, cells, out=np.zeros(grid.shape), where=cells > 0)

    def hist(counts: np.ndarray, length: int) -> list[int]:
        frac = counts / max(length, 1)
        touched = frac[counts > 0]
        upper = np.histogram(touched, bins=np.array(HIST_EDGES))[0] if touched.size else np.zeros(len(HIST_EDGES) - 1)
        return [int((counts == 0).sum()), *(int(x) for x in upper)]

    return {
        "name": name, "shape": shape, "tolerance": float(metadata.get("tolerance", "nan")),
        "changed": int(row_counts.sum()), "numel": m * n,
        "row_edges": row_edges.tolist(), "col_edges": col_edges.tolist(),
        "density": share.tolist(),
        "row_coverage": float((row_counts > 0).mean()) if m else None,
        "col_coverage": float((col_counts > 0).mean()) if n else None,
        "hist_edges": list(HIST_EDGES), "row_hist": hist(row_counts, n), "col_hist": hist(col_counts, m),
    }
