"""The files of the trained demo's checkpoints: model.safetensors, config.json, trainer_state.json."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file


def round6(x: float) -> float:
    """Six significant digits: logged numbers that repeat byte for byte."""
    return float(f"{x:.6g}")


def save_checkpoint(directory: Path, state: dict, config: dict, trainer_state: dict | None = None) -> Path:
    """model.safetensors, config.json (`config`) and, for a trainer's checkpoint, trainer_state.json."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if trainer_state is not None:
        (directory / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
    return directory


def trainer_state(step: int, max_steps: int, save_every: int, batch: int, log: list[dict]) -> dict:
    return {"best_metric": None, "best_model_checkpoint": None, "epoch": None, "global_step": step,
            "is_hyper_param_search": False, "is_local_process_zero": True, "is_world_process_zero": True,
            "log_history": list(log), "logging_steps": 1, "max_steps": max_steps, "num_train_epochs": 1,
            "save_steps": save_every, "train_batch_size": batch}


