"""A small training run on disk: a base and `checkpoint-<step>/` folders in the HF Trainer layout,
plus the float64 reference of its dynamics (docs/METRICS.md, "Training dynamics"), computed with
torch directly from the checkpoints, never from the engine's masks or results."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from worker.engine.kernel.bins import EXACT_TOLERANCES
from worker.engine.pairing.location import locate
from worker.engine.tolerance import tolerance_key

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
          "tie_word_embeddings": False}
# Files the Trainer writes beside the weights: never to be read (pickles would be refused if they were).
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def base_state(seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": (torch.randn(40, 32, generator=gen) * 0.02).to(torch.bfloat16)}
    for i in range(2):
        p = f"model.layers.{i}."
        # Near-zero weights too, where bf16 steps are below the tolerances that matter.
        w = torch.randn(32, 32, generator=gen) * 0.02
        w[:4] *= 1e-3
        state[p + "self_attn.q_proj.weight"] = w.to(torch.bfloat16)
        state[p + "mlp.up_proj.weight"] = (torch.randn(48, 32, generator=gen) * 0.02).to(torch.bfloat16)
        state[p + "input_layernorm.weight"] = torch.ones(32)  # fp32
    state["model.norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
    state["lm_head.weight"] = (torch.randn(40, 32, generator=gen) * 0.02).to(torch.bfloat16)
    return state


def train_step(state: dict[str, torch.Tensor], gen: torch.Generator, *, move: float, revert: float,
               base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move a share of the weights (some by tiny steps), and put a share of them back to the base value."""
    out = {}
    for name, w in state.items():
        x = w.float()
        pick = torch.rand(x.shape, generator=gen) < move
        scale = torch.where(torch.rand(x.shape, generator=gen) < 0.3, 1e-6, 1e-3)
        moved = (x + torch.randn(x.shape, generator=gen) * scale).to(w.dtype)
        new = torch.where(pick, moved, w)
        back = torch.rand(x.shape, generator=gen) < revert
        out[name] = torch.where(back, base[name], new)
    return out


def save(directory: Path, state: dict[str, torch.Tensor], *, trainer_files: bool = False,
         config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config or CONFIG))
    if trainer_files:
        for name in TRAINER_FILES:
            (directory / name).write_bytes(pickle.dumps({"never": "loaded"}))
        (directory / "trainer_state.json").write_text(json.dumps({"global_step": 0}))
    return directory


def write_run(root: Path, steps=(100, 200, 300), seed: int = 11) -> tuple[Path, Path, dict]:
    """(base dir, run dir, {"base": state, step: state}) of a run with `checkpoint-<step>/` folders."""
    gen = torch.Generator().manual_seed(seed)
    base = base_state()
    states = {"base": base}
    save(root / "base", base)
    state = base
    for i, step in enumerate(steps):
        state = train_step(state, gen, move=0.15 + 0.05 * i, revert=0.2, base=base)
        states[step] = state
        save(root / "run" / f"checkpoint-{step}", state, trainer_files=True)
    return root / "base", root / "run", states


def changed(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    d = b.double() - a.double()
    return (d.abs() > t) | d.isnan()


def reference(states: list[dict[str, torch.Tensor]], t: float) -> dict:
    """The dynamics of states[0] (base) -> states[1..k], in float64, by brute force."""
    base, points = states[0], states[1:]
    k = len(points)
    keys = [tolerance_key(x) for x in EXACT_TOLERANCES]
    names = list(base)
    n = sum(base[x].numel() for x in names)
    masks = [{x: changed(base[x], p[x], t) for x in names} for p in points]
    final = masks[-1]
    out = {"numel": n, "checkpoints": [], "layers": {}}
    union = {x: torch.zeros_like(final[x]) for x in names}
    layers = sorted({(locate(x).stack, locate(x).layer) for x in names}, key=lambda s: (s[1] is None, s[0] or "", s[1] or 0))
    per_layer = {key: [] for key in layers}
    for i, (p, m) in enumerate(zip(points, masks)):
        prev = states[i]
        for x in names:
            union[x] |= m[x]

        def counts(sel):
            subnet = sum(int(m[x].sum()) for x in sel)
            ever = sum(int(union[x].sum()) for x in sel)
            outside = sum(int((union[x] & ~m[x]).sum()) for x in sel)
            both = sum(int((m[x] & final[x]).sum()) for x in sel)
            fin = sum(int(final[x].sum()) for x in sel)
            numel = sum(base[x].numel() for x in sel)
            return {"subnet": subnet, "ever_changed": ever, "ever_outside": outside, "final_both": both,
                    "outside_share": outside / ever if ever else None, "o1": both / subnet if subnet else None,
                    "o2": both / fin if fin else None, "random_o1": fin / numel, "random_o2": subnet / numel,
                    "ever_density": ever / numel, "subnet_density": subnet / numel,
                    "sparsity": {key: 1 - sum(int(changed(base[x], p[x], tol).sum()) for x in sel) / numel
                                 for key, tol in zip(keys, EXACT_TOLERANCES)},
                    "consecutive": {key: 1 - sum(int(changed(prev[x], p[x], tol).sum()) for x in sel) / numel
                                    for key, tol in zip(keys, EXACT_TOLERANCES)}}

        out["checkpoints"].append(counts(names))
        for key in layers:
            per_layer[key].append(counts([x for x in names if (locate(x).stack, locate(x).layer) == key]))
    out["layers"] = per_layer
    assert len(out["checkpoints"]) == k
    return out
