"""Real engine results on the demo family, computed once per session (no hand-made result dicts)."""

from __future__ import annotations

import pytest

from worker.demo.synthetic import write_demo
from worker.engine import AnalysisOptions, analyze, open_source, overlap, parse_source


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    dirs = write_demo(root / "ckpt")
    results, masks = {}, {}
    for name in ("sft", "rl_a", "rl_b", "resized"):
        out = root / "masks" / name
        with open_source(parse_source(str(dirs["base"]), allow_any_path=True)) as base, \
                open_source(parse_source(str(dirs[name]), allow_any_path=True)) as tuned:
            rank = "all" if name == "rl_a" else "off"
            geometry = {"rl_a": "all", "sft": "sampled"}.get(name, "off")
            results[name] = analyze(base, tuned, AnalysisOptions(tolerance=1e-5, rank=rank, geometry=geometry,
                                                                 device="cpu"), masks_dir=out)
        masks[name] = out / "masks.safetensors"
    results["_overlap2"] = overlap([masks["rl_a"], masks["rl_b"]], labels=["rl_a", "rl_b"])
    results["_masks"] = masks
    results["_overlap3"] = overlap([masks["rl_a"], masks["rl_b"], masks["sft"]], labels=["rl_a", "rl_b", "sft"])
    return results
