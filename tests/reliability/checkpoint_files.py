"""Checkpoints written byte by byte: valid ones, and each way a safetensors file can be broken.

The broken files are built from raw bytes rather than through the safetensors
library, because the library refuses to write most of them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

# Names the engine recognises as layers/modules, so the files look like a real model.
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def small_state(seed: int = 0, *, dtype=torch.bfloat16, layers: int = 2, dim: int = 64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {
        f"model.layers.{i}.self_attn.{m}.weight": torch.randn(dim, dim, generator=gen).to(dtype)
        for i in range(layers)
        for m in MODULES
    }
    state["model.norm.weight"] = torch.ones(dim, dtype=dtype)
    return state


def nudge(state: dict, every: int = 7) -> dict:
    """A 'finetune': every `every`-th element of each tensor moved by a visible amount."""
    tuned = {}
    for name, t in state.items():
        flat = t.float().flatten().clone()
        flat[::every] += 0.01
        tuned[name] = flat.reshape(t.shape).to(t.dtype)
    return tuned


def write_checkpoint(directory: Path, state: dict, *, config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config or llama_config()))
    return directory


def llama_config(**overrides) -> dict:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}
    config.update(overrides)
    return config


# --- raw safetensors bytes -------------------------------------------------------------


def raw_file(header: dict, data: bytes, *, declared_len: int | None = None, pad: bool = True) -> bytes:
    """Header length (u64 LE) + JSON header + data, with `declared_len` to lie about the length."""
    blob = json.dumps(header, separators=(",", ":")).encode()
    if pad:  # the format pads the header with spaces to 8-byte alignment
        blob += b" " * (-len(blob) % 8)
    length = len(blob) if declared_len is None else declared_len
    return struct.pack("<Q", length) + blob + data


def _f32(n: int, value: float = 0.5) -> bytes:
    return struct.pack(f"<{n}f", *([value] * n))


def broken_files() -> dict[str, bytes]:
    """case name -> bytes of a model.safetensors that a strict reader must refuse.

    Every file declares the same two tensors ("model.layers.0.self_attn.q_proj.weight"
    4x4 F32 and "model.norm.weight" 4 F32), so that only the broken part differs.
    """
    q, n = "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"
    good_header = {
        q: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
        n: {"dtype": "F32", "shape": [4], "data_offsets": [64, 80]},
    }
    data = _f32(20)
    good = raw_file(good_header, data)

    def with_entry(**changes) -> dict:
        header = json.loads(json.dumps(good_header))
        for name, entry in changes.items():
            header[name] = entry
        return header

    return {
        # cut mid-way through the data section
        "truncated": good[: len(good) - 24],
        # a 200 MB header: the reader must refuse before allocating or downloading it
        "header_too_large": struct.pack("<Q", 200 << 20) + b"{" + b" " * 64,
        # header length pointing past the end of the file
        "header_length_past_eof": raw_file(good_header, data, declared_len=1 << 20),
        # not JSON at all
        "header_not_json": struct.pack("<Q", 16) + b"this is not json",
        # two tensors sharing bytes 32..64
        "overlapping_offsets": raw_file(
            with_entry(**{n: {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]}}), _f32(16)
        ),
        # a tensor claiming bytes beyond the data section
        "offsets_out_of_range": raw_file(
            with_entry(**{n: {"dtype": "F32", "shape": [4], "data_offsets": [64, 4096]}}), data
        ),
        # offsets that disagree with dtype x shape
        "offsets_wrong_size": raw_file(
            with_entry(**{n: {"dtype": "F32", "shape": [4], "data_offsets": [64, 72]}}), data[:72]
        ),
        # bytes after the last tensor that no tensor accounts for
        "trailing_bytes": raw_file(good_header, data + b"\x00" * 4096),
        # a dtype no reader knows
        "unknown_dtype": raw_file(
            with_entry(**{q: {"dtype": "Q4_K", "shape": [4, 4], "data_offsets": [0, 64]}}), data
        ),
    }


def write_broken(directory: Path, case: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.safetensors").write_bytes(broken_files()[case])
    (directory / "config.json").write_text(json.dumps(llama_config(hidden_size=4)))
    return directory


def tiny_good_state() -> dict:
    """The valid counterpart of `broken_files`: same names, shapes and dtypes."""
    return {
        "model.layers.0.self_attn.q_proj.weight": torch.full((4, 4), 0.5),
        "model.norm.weight": torch.full((4,), 0.5),
    }


# --- a checkpoint pair big enough to kill a worker in the middle of it ------------------


def write_big_pair(root: Path, *, tensors: int, rows: int, cols: int, seed: int = 1) -> tuple[Path, Path]:
    """Two bf16 checkpoints of `tensors` matrices rows x cols, tuned touching ~1 element in 5.

    Written tensor by tensor into a shard each, so memory stays at one tensor.
    """
    base_dir, tuned_dir = root / "base", root / "tuned"
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    for d in (base_dir, tuned_dir):
        d.mkdir(parents=True, exist_ok=True)
    per_shard = 8
    shards: list[list[str]] = []
    names = [
        f"model.layers.{i // len(MODULES)}.self_attn.{MODULES[i % len(MODULES)]}.weight"
        for i in range(tensors)
    ]
    for start in range(0, tensors, per_shard):
        shards.append(names[start : start + per_shard])
    total = len(shards)
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{total:05d}.safetensors"
        base_part, tuned_part = {}, {}
        for name in shard:
            w = torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
            mask = torch.rand(rows, cols, generator=gen) < 0.2
            base_part[name] = w
            tuned_part[name] = torch.where(mask, (w.float() * 1.01 + 1e-3).to(torch.bfloat16), w)
            weight_map[name] = fname
        save_file(base_part, str(base_dir / fname))
        save_file(tuned_part, str(tuned_dir / fname))
    index = {"metadata": {}, "weight_map": weight_map}
    for d in (base_dir, tuned_dir):
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        (d / "config.json").write_text(json.dumps(llama_config(hidden_size=cols)))
    return base_dir, tuned_dir
