"""Small real checkpoints for the service tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_pair(base_dir: Path, tuned_dir: Path, *, layers: int = 2, dim: int = 64, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = {f"model.layers.{i}.self_attn.{m}.weight": torch.randn(dim, dim, generator=gen).to(torch.bfloat16)
            for i in range(layers) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    tuned = {}
    for name, w in base.items():
        flat = w.float().flatten().clone()
        flat[::5] += 0.01
        tuned[name] = flat.reshape(w.shape).to(torch.bfloat16)
    for d, state in ((base_dir, base), (tuned_dir, tuned)):
        d.mkdir(parents=True, exist_ok=True)
        save_file(state, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                   "hidden_size": dim}))
