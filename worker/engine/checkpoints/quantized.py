"""Checkpoints whose stored tensors are not the weights themselves (docs/METRICS.md, "Pairing tensors").

A `DequantizedSource` wraps a source and shows the weights a model computes with:

* Block-scaled fp8 (DeepSeek-V3/R1): `X.weight` F8_E4M3 beside `X.weight_scale_inv` F32, one
  scale per `weight_block_size` block of the last two dims (config.json's
  `quantization_config`, 128x128, edge blocks partial). `X.weight` reads as q x s in float64,
  exact (4 significant bits times 24); the scale tensor is hidden: it is not an element.
* MXFP4 (gpt-oss): `X_blocks` U8 [*P, G, 16], two e2m1 codes per byte (element 2k is the low
  nibble, 2k+1 the high one), beside `X_scales` U8 e8m0 [*P, G], one per 32 values. `X` reads
  as code value x 2^(scale - 127) in float64, in transformers' layout (the last two dims of a
  3-D expert tensor swapped, as `convert_moe_packed_tensors` does), so it pairs by name and
  shape with a dequantized bf16 finetune.
* Fused experts (`mlp.experts.gate_up_proj` [E, ...], `down_proj`, their `_bias`): one tensor
  per expert, `mlp.experts.<e>.gate_up_proj` (`...<e>.gate_up_proj.bias`), so experts fold into
  `*` as unfused ones do and each expert matrix gets its own rank and geometry.

Packed integer formats (GPTQ, AWQ, GGUF and their kin) are refused, named.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from worker.engine.checkpoints.safetensors_format import DTYPES, TensorInfo
from worker.engine.checkpoints.sources import Piece, Source
from worker.engine.errors import EngineError

# e2m1 code -> value (OCP MX spec; transformers' FP4_VALUES): sign bit 3, then 1 exponent and 1 mantissa bit.
FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                          dtype=torch.float64)
MX_BLOCK = 32  # values per e8m0 scale
# quant_method values of formats whose weights are packed integers: refused, named.
PACKED_METHODS = {"gptq": "GPTQ", "awq": "AWQ", "gguf": "GGUF", "aqlm": "AQLM", "exl2": "EXL2", "hqq": "HQQ",
                  "bitsandbytes": "bitsandbytes", "eetq": "EETQ", "quanto": "Quanto", "vptq": "VPTQ",
                  "higgs": "HIGGS", "spqr": "SpQR", "bitnet": "BitNet"}
PACKED_SUFFIXES = {".qweight": "GPTQ/AWQ", ".qzeros": "GPTQ/AWQ", ".g_idx": "GPTQ"}
SCALE_DTYPES = ("F32", "BF16", "F16")
_FUSED = re.compile(r"^(?P<stem>.*\.(?:experts|local_experts))\.(?P<param>[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class LogicalInfo(TensorInfo):
    """A tensor as the model sees it, read from stored tensors (`stored`, `scale`) of the inner source.

    `kind`: "slice" (a plain expert slice, its stored dtype), "fp8_block" or "mxfp4" (float64 values).
    `start`: the first logical element of this tensor in the stored tensor (an expert slice's offset).
    """

    kind: str = "slice"
    stored: str = ""
    scale: str | None = None
    block: tuple[int, int] | None = None  # fp8: (rows, cols) per scale
    stored_shape: tuple[int, ...] = ()  # the whole stored tensor as logical values (before an expert split)
    start: int = 0
    label: str = ""  # e.g. "fp8 e4m3, 128x128 f32 scales"

    @property
    def decoded(self) -> bool:
        return self.kind != "slice"

    @property
    def itemsize(self) -> int:
        # Bytes of codes per element, for progress and fan-out sizes (MXFP4: half a byte, rounded up).
        return 1 if self.decoded else DTYPES[self.dtype][0]

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return torch.float64 if self.decoded else DTYPES[self.dtype][1]


def refuse_packed(source: Source) -> None:
    """EngineError("unsupported_format") for GPTQ/AWQ/GGUF-style packed integer checkpoints."""
    q = (source.config or {}).get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower() if isinstance(q, dict) else ""
    name = PACKED_METHODS.get(method)
    if name is None:
        name = next((fmt for n in source.tensors for suffix, fmt in PACKED_SUFFIXES.items() if n.endswith(suffix)), None)
    if name is not None:
        raise EngineError(
            "unsupported_format",
            f"{source.spec.label} is quantized as {name} (packed integer weights); Subnetscope compares bf16, fp16, "
            "fp32, fp8 (per tensor or block-scaled) and MXFP4 weights, not GPTQ, AWQ or GGUF. Compare the "
            "unquantized checkpoints instead.",
        )


def _block_size(source: Source) -> tuple[int, int] | None:
    q = (source.config or {}).get("quantization_config") or {}
    size = q.get("weight_block_size") if isinstance(q, dict) else None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size):
        return size[0], size[1]
    return None


def _fp8_view(source: Source, name: str, info: TensorInfo, scale: TensorInfo, block) -> LogicalInfo:
    where = f"{source.spec.label}: {name}"
    if block is None:
        raise EngineError("malformed", f"{where} has block scales ({scale.name}) but config.json's quantization_config "
                                       "gives no weight_block_size [rows, cols].")
    if len(info.shape) < 2 or scale.dtype not in SCALE_DTYPES:
        raise EngineError("malformed", f"{where}: block scales need a matrix and float scales, not {info.shape} "
                                       f"with {scale.dtype} scales.")
    want = (*info.shape[:-2], -(-info.shape[-2] // block[0]), -(-info.shape[-1] // block[1]))
    if scale.shape != want:
        raise EngineError("malformed", f"{where} of shape {list(info.shape)} needs {list(want)} scales for "
                                       f"{block[0]}x{block[1]} blocks, but {scale.name} is {list(scale.shape)}.")
    label = f"{info.dtype.lower().replace('f8_', 'fp8 ')}, {block[0]}x{block[1]} {scale.dtype.lower()} scales"
    return LogicalInfo(name, info.dtype, info.shape, info.file, info.offset, info.nbytes, kind="fp8_block",
                       stored=name, scale=scale.name, block=block, stored_shape=info.shape, label=label)


def _mxfp4_view(source: Source, name: str, blocks: TensorInfo, scales: TensorInfo) -> LogicalInfo:
    where = f"{source.spec.label}: {blocks.name}"
    if blocks.dtype != "U8" or scales.dtype != "U8" or len(blocks.shape) < 3 or blocks.shape[-1] * 2 != MX_BLOCK \
            or scales.shape != blocks.shape[:-1] or len(blocks.shape) > 4:
        raise EngineError("malformed", f"{where} {blocks.dtype}{list(blocks.shape)} with scales {scales.dtype}"
                                       f"{list(scales.shape)} is not MXFP4 (U8 [..., G, 16] codes, U8 [..., G] scales).")
    *prefix, groups, _ = blocks.shape
    stored = (*prefix, groups * MX_BLOCK)
    # A 3-D expert tensor reads in transformers' layout: [E, rows, cols] stored, [E, cols, rows] used.
    shape = (stored[0], stored[2], stored[1]) if len(stored) == 3 else stored
    return LogicalInfo(name, "U8", shape, blocks.file, blocks.offset, blocks.nbytes, kind="mxfp4",
                       stored=blocks.name, scale=scales.name, stored_shape=stored, label="mxfp4 e2m1, e8m0 scales per 32")


def _split_experts(name: str, info: TensorInfo) -> dict[str, LogicalInfo] | None:
    """The per-expert tensors of a fused expert tensor, or None when `name` is not one."""
    m = _FUSED.match(name)
    if m is None or not info.shape or info.shape[0] == 0:
        return None
    param = m["param"]
    if param.endswith("_bias") and len(info.shape) == 2:
        param = param[: -len("_bias")] + ".bias"
    elif len(info.shape) != 3:
        return None
    base = info if isinstance(info, LogicalInfo) else LogicalInfo(
        name, info.dtype, info.shape, info.file, info.offset, info.nbytes, stored=name, stored_shape=info.shape)
    each = math.prod(info.shape[1:])
    out = {}
    for e in range(info.shape[0]):
        split = f"{m['stem']}.{e}.{param}"
        nbytes = each * base.itemsize if not base.decoded else 0
        out[split] = LogicalInfo(split, base.dtype, tuple(info.shape[1:]), base.file, base.offset + e * nbytes, nbytes,
                                 kind=base.kind, stored=base.stored, scale=base.scale, block=base.block,
                                 stored_shape=base.stored_shape, start=e * each, label=base.label)
    return out


def view(source: Source) -> Source:
    """The source as the model's weights: itself when nothing is quantized or fused, else a DequantizedSource."""
    refuse_packed(source)
    tensors = source.tensors
    block = _block_size(source)
    logical: dict[str, TensorInfo] = {}
    hidden: set[str] = set()
    for name, info in tensors.items():
        if name.endswith(".weight") and info.dtype in ("F8_E4M3", "F8_E5M2") and f"{name}_scale_inv" in tensors:
            logical[name] = _fp8_view(source, name, info, tensors[f"{name}_scale_inv"], block)
            hidden.add(f"{name}_scale_inv")
        elif name.endswith("_blocks") and f"{name[:-7]}_scales" in tensors:
            logical[name[:-7]] = _mxfp4_view(source, name[:-7], info, tensors[f"{name[:-7]}_scales"])
            hidden.add(f"{name[:-7]}_scales")
        else:
            logical[name] = info
    for name in hidden:
        logical.pop(name, None)
    changed = bool(hidden)
    out: dict[str, TensorInfo] = {}
    for name, info in logical.items():
        split = _split_experts(name, info)
        changed |= split is not None
        out.update(split or {name: info})
    return DequantizedSource(source, out) if changed else source


class DequantizedSource(Source):
    """Reads logical tensors (LogicalInfo) from the stored ones of `inner`; plain tensors pass through."""

    def __init__(self, inner: Source, tensors: dict[str, TensorInfo]):
        self.inner = inner
        self.spec, self.sha, self.config = inner.spec, inner.sha, inner.config
        self.tensors = tensors
        self.prefetch_bytes = inner.prefetch_bytes
        self._scales: dict[str, torch.Tensor] = {}  # stored scale tensors of the tensor being read
        # (stored name, expert, its codes [rows, G, 16], its scales [rows, G]) of the last 3-D MXFP4 expert read
        self._expert: tuple | None = None

    def __getattr__(self, attr):  # files, directory, ... of the inner source
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @property
    def total_bytes(self) -> int:
        return self.inner.total_bytes

    @property
    def bytes_read(self) -> int:
        return self.inner.bytes_read

    def describe(self) -> dict:
        return self.inner.describe()

    def formats(self) -> dict[str, int]:
        """label -> number of logical tensors read that way (fp8 blocks, MXFP4)."""
        out: dict[str, int] = {}
        for info in self.tensors.values():
            if isinstance(info, LogicalInfo) and info.decoded:
                out[info.label] = out.get(info.label, 0) + 1
        return out

    # --- what to read ------------------------------------------------------------------------

    def _stored(self, piece: Piece) -> list[Piece]:
        """The inner pieces one logical piece needs (scales are read whole, apart)."""
        info = self.tensors[piece.name]
        if not isinstance(info, LogicalInfo):
            return [piece]
        s, t = info.start + piece.start, info.start + piece.stop
        if info.kind in ("slice", "fp8_block"):
            return [Piece(info.stored, s, t)]
        if len(info.stored_shape) == 3:  # transposed: the whole expert matrix
            each = math.prod(info.stored_shape[1:])
            e = info.start // each
            if self._expert is not None and self._expert[:2] == (info.stored, e):
                return []
            s, t = e * each, (e + 1) * each
        else:
            s, t = s - s % MX_BLOCK, -(-t // MX_BLOCK) * MX_BLOCK
        return [Piece(info.stored, s // 2, t // 2), Piece(info.scale, s // MX_BLOCK, t // MX_BLOCK)]

    def _decode(self, piece: Piece, raws: list[torch.Tensor]) -> torch.Tensor:
        info = self.tensors[piece.name]
        if not isinstance(info, LogicalInfo) or info.kind == "slice":
            return raws[0]
        if info.kind == "fp8_block":
            values = fp8_block_values(raws[0], info.start + piece.start, info.stored_shape, self._scale(info), info.block)
            return _with_codes(values, raws[0].view(torch.uint8))
        if len(info.stored_shape) == 3:
            rows, cols = info.stored_shape[1:]
            if raws:  # a copy of one expert's bytes (half a byte per value): pieces decode from it
                e = info.start // (rows * cols)
                self._expert = (info.stored, e, raws[0].view(torch.uint8).reshape(rows, -1, 16).clone(),
                                raws[1].view(torch.uint8).reshape(rows, -1).clone())
            return _with_codes(*_transposed_range(self._expert[2], self._expert[3], piece.start, piece.stop))
        skip = (info.start + piece.start) % MX_BLOCK
        values, codes = mxfp4_decode(raws[0], raws[1])
        return _with_codes(values[skip: skip + piece.stop - piece.start], codes[skip: skip + piece.stop - piece.start])

    def _scale(self, info: LogicalInfo) -> torch.Tensor:
        if info.scale not in self._scales:
            self._scales.clear()  # one tensor's scales at a time: tensors are read one after another
            self._scales[info.scale] = self.inner.read(info.scale).to(torch.float64).reshape(-1)
        return self._scales[info.scale]

    # --- the Source interface ----------------------------------------------------------------

    def read_piece(self, piece: Piece) -> torch.Tensor:
        stored = self._stored(piece)
        return self._decode(piece, [self.inner.read_piece(p) for p in stored])

    def _copies(self, piece: Piece) -> bool:
        """Whether the piece's tensors hold none of the stored bytes (MXFP4 values and codes are new)."""
        info = self.tensors[piece.name]
        return isinstance(info, LogicalInfo) and info.kind == "mxfp4"

    def iter_pieces(self, pieces: Sequence[Piece]) -> Iterator[tuple[Piece, torch.Tensor]]:
        pieces = list(pieces)
        plans, flat, seen = [], [], None
        for p in pieces:
            info = self.tensors[p.name]
            if isinstance(info, LogicalInfo) and info.kind == "mxfp4" and len(info.stored_shape) == 3:
                e = (info.stored, info.start // math.prod(info.stored_shape[1:]))
                need = [] if e == seen else self._stored_whole(info)
                seen = e
            else:
                need = self._stored(p)
            plans.append(len(need))
            flat.extend(need)
        reads = self.inner.iter_pieces(flat)
        for p, n in zip(pieces, plans):
            got = [next(reads) for _ in range(n)]
            out = self._decode(p, [t for _, t in got])
            if self._copies(p):  # the stored bytes can go now
                for q, _ in got:
                    self.inner.release(q)
            yield p, out

    def _stored_whole(self, info: LogicalInfo) -> list[Piece]:
        each = math.prod(info.stored_shape[1:])
        e = info.start // each
        return [Piece(info.stored, e * each // 2, (e + 1) * each // 2),
                Piece(info.scale, e * each // MX_BLOCK, (e + 1) * each // MX_BLOCK)]

    def release(self, piece: Piece) -> None:
        if not self._copies(piece):
            for p in self._stored(piece):
                self.inner.release(p)

    def close(self) -> None:
        self._scales.clear()
        self._expert = None
        self.inner.close()


def fp8_block_values(codes: torch.Tensor, first: int, shape: tuple[int, ...], scales: torch.Tensor,
                     block: tuple[int, int]) -> torch.Tensor:
    """q x s in float64 for the stored elements [first, first + len(codes)) of a block-scaled tensor."""
    rows, cols = shape[-2], shape[-1]
    srows, scols = -(-rows // block[0]), -(-cols // block[1])
    idx = torch.arange(first, first + codes.numel(), dtype=torch.int64)
    matrix, within = idx // (rows * cols), idx % (rows * cols)
    r, c = within // cols, within % cols
    s = scales[(matrix * srows + r // block[0]) * scols + c // block[1]]
    return codes.to(torch.float64) * s


def _with_codes(values: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The values, carrying the stored code of each (`.codes`): the pass counts changed codes from them."""
    values.codes = codes
    return values


def _transposed_range(blocks: torch.Tensor, scales: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, codes) [start, stop) of the transpose of the expert matrix stored as `blocks` [rows, G, 16]:
    only the stored columns (logical rows) the range touches are decoded, so memory follows the piece."""
    rows = blocks.shape[0]
    first, last = start // rows, -(-stop // rows)  # logical rows = stored columns [first, last)
    g0, g1 = first // MX_BLOCK, -(-last // MX_BLOCK)
    out = []
    for x in mxfp4_decode(blocks[:, g0:g1].reshape(-1), scales[:, g0:g1].reshape(-1)):
        columns = x.view(rows, -1)[:, first - g0 * MX_BLOCK: last - g0 * MX_BLOCK]
        out.append(columns.t().reshape(-1)[start - first * rows: stop - first * rows])
    return out[0], out[1]


def mxfp4_decode(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(code value x 2^(scale - 127) in float64, the 4-bit code) per value: two per byte (low nibble
    first), 32 per scale."""
    raw = blocks.view(torch.uint8)
    codes = torch.stack((raw & 0x0F, raw >> 4), dim=-1).reshape(-1)
    exponent = scales.view(torch.uint8).to(torch.int64).repeat_interleave(MX_BLOCK) - 127
    return torch.ldexp(FP4_VALUES[codes.long()], exponent.to(torch.float64)), codes


# --- the raw-code view (secondary to the values; docs/METRICS.md) -----------------------------------

CODE_CHUNK = 1 << 22  # stored elements compared at a time


class CodeCounts:
    """Changed stored codes per tensor, counted from the pieces the pass reads anyway (their `.codes`)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()  # pieces are measured on several threads

    def add(self, name: str, base: torch.Tensor, tuned: torch.Tensor) -> None:
        cb, ct = getattr(base, "codes", None), getattr(tuned, "codes", None)
        if cb is None or ct is None or cb.shape != ct.shape:
            return
        n = int(torch.count_nonzero(cb != ct))
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def pop(self, name: str) -> int | None:
        with self._lock:
            return self.counts.pop(name, None)


def quantization_record(base: Source, tuned: Source, base_name: str, tuned_name: str,
                        codes_changed: int | None = None) -> dict | None:
    """{"base": label | None, "tuned": label | None} for a pair with a quantized side; where both sides
    are stored alike, also the scale blocks (changed and all) and the elements whose stored code changed
    (`codes_changed` as the pass counted it, else read again here)."""
    b, t = base.tensors[base_name], tuned.tensors[tuned_name]
    bq = b.label if isinstance(b, LogicalInfo) and b.decoded else None
    tq = t.label if isinstance(t, LogicalInfo) and t.decoded else None
    if bq is None and tq is None:
        return None
    out: dict = {"base": bq, "tuned": tq}
    if bq == tq and (b.kind, b.stored_shape, b.block, b.start, b.numel) == (t.kind, t.stored_shape, t.block, t.start, t.numel):
        scales = _scale_range(b)
        out["scale_blocks"] = scales[1] - scales[0]
        out["scale_blocks_changed"] = _changed(base, tuned, b.scale, t.scale, *scales, nibbles=False)
        first, stop = b.start, b.start + b.numel
        if codes_changed is not None:
            out["codes_changed"] = codes_changed
        elif b.kind == "mxfp4":
            out["codes_changed"] = _changed(base, tuned, b.stored, t.stored, first // 2, stop // 2, nibbles=True)
        else:
            out["codes_changed"] = _changed(base, tuned, b.stored, t.stored, first, stop, nibbles=False)
    return out


def _scale_range(info: LogicalInfo) -> tuple[int, int]:
    """[first, stop) of the stored scales that belong to this logical tensor."""
    if info.kind == "mxfp4":
        return info.start // MX_BLOCK, (info.start + info.numel) // MX_BLOCK
    rows, cols = info.stored_shape[-2:]
    per = -(-rows // info.block[0]) * -(-cols // info.block[1])
    first = info.start // (rows * cols)
    return first * per, (first + info.numel // (rows * cols)) * per


def _changed(base: Source, tuned: Source, bname: str, tname: str, first: int, stop: int, *, nibbles: bool) -> int:
    """Stored elements in [first, stop) whose bits differ (MXFP4 bytes: each differing nibble)."""
    inner_b, inner_t = getattr(base, "inner", base), getattr(tuned, "inner", tuned)
    chunks = [(s, min(s + CODE_CHUNK, stop)) for s in range(first, stop, CODE_CHUNK)]
    reads_b = inner_b.iter_pieces([Piece(bname, s, e) for s, e in chunks])
    reads_t = inner_t.iter_pieces([Piece(tname, s, e) for s, e in chunks])
    count = 0
    for (pb, xb), (pt, xt) in zip(reads_b, reads_t):
        raw = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[xb.element_size()]
        ib, it = xb.view(raw), xt.view(raw)
        if nibbles:
            diff = ib ^ it
            count += int(torch.count_nonzero(diff & 0x0F)) + int(torch.count_nonzero(diff >> 4))
        else:
            count += int(torch.count_nonzero(ib != it))
        inner_b.release(pb)
        inner_t.release(pt)
    return count
