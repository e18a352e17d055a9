"""Lineage: the parent ranks first, read by range over a loopback Hub that counts the bytes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hubserver import HubServer  # tests/ is on sys.path (tests/conftest.py's directory)
from safetensors.torch import load_file, save_file

from worker.demo.synthetic import write_demo
from worker.engine import SourceSpec, open_source, parse_source
from worker.engine.lineage import interval, lineage, wilson

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _hf_env(hf_env):
    """Every Hub source here talks to the loopback Hub (tests/engine/conftest.py)."""


def _child(state: dict, seed: int, share: float) -> dict:
    """Move `share` of every tensor's elements one or a few bf16 steps (a sparse RL-like update)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in state.items():
        where = torch.rand(w.shape, generator=gen) < share
        moved = torch.nextafter(w, torch.full_like(w, 1.0))
        out[name] = torch.where(where, moved, w).contiguous()
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    demo = write_demo(root / "demo", trained=False)
    repos = root / "repos"
    for name in ("base", "sft", "rl_a", "rl_b"):
        shutil.copytree(demo[name], repos / "org" / name)
    # An unrelated model of the same shape: another initialisation.
    gen = torch.Generator().manual_seed(7)
    base_state = load_file(demo["base"] / "model.safetensors")
    unrelated = {k: (torch.randn(v.shape, generator=gen) * 0.02).to(v.dtype) if v.dim() > 1 else v.clone()
                 for k, v in base_state.items()}
    (repos / "org" / "unrelated").mkdir(parents=True)
    save_file(unrelated, repos / "org" / "unrelated" / "model.safetensors")
    shutil.copy(demo["base"] / "config.json", repos / "org" / "unrelated")
    # A finetune of rl_a (its parent), so base is its grandparent and rl_b its aunt.
    child = root / "child"
    child.mkdir()
    save_file(_child(load_file(demo["rl_a"] / "model.safetensors"), 3, 0.05), child / "model.safetensors")
    shutil.copy(demo["rl_a"] / "config.json", child)
    # A candidate with one matrix of another shape: listed, never counted.
    odd = dict(base_state)
    odd["model.layers.0.mlp.up_proj.weight"] = odd["model.layers.0.mlp.up_proj.weight"][:, :64].contiguous()
    (repos / "org" / "odd").mkdir(parents=True)
    save_file(odd, repos / "org" / "odd" / "model.safetensors")
    return {"demo": demo, "repos": repos, "child": child}


@pytest.fixture
def hub(family):
    server = HubServer(family["repos"])
    with server, server.endpoint():
        yield server


def _rank(hub, target_dir, names):
    target = open_source(parse_source(str(target_dir), allow_any_path=True))
    rows = {}
    with target:
        for name in names:
            before = hub.bytes_served()
            with open_source(SourceSpec("hub", f"org/{name}", None, display=f"org/{name}")) as cand:
                row = lineage(target, [cand])["candidates"][0]
                total = cand.total_bytes
            row["hub_bytes"] = hub.bytes_served() - before
            assert row["hub_bytes"] <= 0.02 * total, (name, row["hub_bytes"], total)
            rows[name] = row
    return sorted(rows.items(), key=lambda kv: -kv[1]["s"])


def _separated(first: dict, second: dict) -> bool:
    return first["low"] > second["high"]


def test_the_parent_ranks_first_and_a_sibling_never_above_it(family, hub):
    ranked = _rank(hub, family["demo"]["rl_a"], ["sft", "rl_b", "unrelated", "base"])
    names = [n for n, _ in ranked]
    assert names[0] == "base" and _separated(ranked[0][1], ranked[1][1]), ranked
    assert names.index("rl_b") > names.index("base")
    assert names[-1] == "unrelated" and ranked[-1][1]["s"] < 0.05


def test_a_grandchild_finds_its_parent_not_its_grandparent(family, hub):
    ranked = _rank(hub, family["child"], ["base", "rl_b", "rl_a"])
    assert [n for n, _ in ranked] == ["rl_a", "base", "rl_b"] or ranked[0][0] == "rl_a"
    assert _separated(ranked[0][1], ranked[1][1])
    # s for the true parent estimates the unchanged share of the update (5 % moved): inside the interval.
    assert ranked[0][1]["low"] <= 0.95 <= ranked[0][1]["high"] + 0.01


def test_a_vocab_resized_child_compares_common_rows(family, hub, tmp_path):
    ranked = _rank(hub, family["demo"]["resized"], ["rl_a", "unrelated", "base"])
    assert ranked[0][0] == "base" and _separated(ranked[0][1], ranked[1][1])
    base_row = ranked[0][1]
    assert set(base_row["resized"]) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert base_row["mismatched"] == []
    odd = _rank(hub, family["demo"]["resized"], ["odd"])[0][1]
    assert [m["name"] for m in odd["mismatched"]] == ["model.layers.0.mlp.up_proj.weight"]
    assert odd["matrices"] == base_row["matrices"] - 1


def test_wilson_and_the_design_effect():
    low, high = wilson(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    sizes = np.full(200, 50.0)
    rng = np.random.default_rng(0)
    independent = rng.binomial(50, 0.8, size=200).astype(float)
    clustered = np.where(rng.random(200) < 0.8, 50.0, 0.0)  # whole blocks identical or not
    a, b = interval(independent, sizes), interval(clustered, sizes)
    assert a["deff"] < 1.5 and b["deff"] > 30
    assert b["high"] - b["low"] > 4 * (a["high"] - a["low"])
