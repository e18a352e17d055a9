"""The trained demo family (quick schedule): a real LlamaForCausalLM layout, real training, same bytes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from worker.demo import trained as T
from worker.demo.synthetic import write_demo
from worker.engine import AnalysisOptions, analyze, open_source, parse_source

CFG = T.QUICK


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    return T.write_trained_demo(tmp_path_factory.mktemp("trained"), quick=True)


def llama_names(cfg: T.TrainedDemoConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
        names |= {p + f"mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return names


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("checkpoint-")) for p in run.glob("checkpoint-*"))


def log_of(checkpoint: Path) -> list[dict]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_checkpoints_look_like_llama_for_causal_lm(family):
    hd = CFG.hidden // CFG.heads
    for name in ("trained/base", "trained/sft", "trained/rl"):
        d = family[name]
        config = json.loads((d / "config.json").read_text())
        assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
        assert config["tie_word_embeddings"] is False and config["torch_dtype"] == "bfloat16"
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            assert set(f.keys()) == llama_names(CFG)
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        assert shapes["lm_head.weight"] == (CFG.vocab, CFG.hidden)
        assert shapes["model.layers.0.self_attn.k_proj.weight"] == (CFG.kv_heads * hd, CFG.hidden)
        assert shapes["model.layers.1.mlp.down_proj.weight"] == (CFG.hidden, CFG.intermediate)


def test_logits_equal_transformers_llama(family):
    transformers = pytest.importorskip("transformers")  # a test-only extra; the product never imports it
    tokens = T.make_problems(T.PLUS, 32, torch.Generator().manual_seed(1))
    for name in ("trained/base", "trained/rl"):
        d = family[name]
        for dtype in (torch.float32, torch.bfloat16):
            model = transformers.LlamaForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager")
            assert set(model.state_dict()) == llama_names(CFG)
            with torch.no_grad():
                theirs = model(tokens).logits.float()
            weights = {k: v.to(dtype) for k, v in load_file(str(d / "model.safetensors")).items()}
            assert torch.equal(T.forward(CFG, weights, tokens), theirs), (name, dtype)


def test_a_checkpoint_every_k_steps(family):
    sft, rl = family["trained/sft_run"], family["trained/rl_run"]
    assert checkpoints(sft) == list(range(CFG.sft_save_every, CFG.sft_steps + 1, CFG.sft_save_every))
    assert checkpoints(rl) == list(range(CFG.rl_save_every, CFG.rl_steps + 1, CFG.rl_save_every))
    for run, steps in ((sft, CFG.sft_steps), (rl, CFG.rl_steps)):
        for step in checkpoints(run):
            c = run / f"checkpoint-{step}"
            assert sorted(p.name for p in c.iterdir()) == ["config.json", "model.safetensors", "trainer_state.json"]
            state = json.loads((c / "trainer_state.json").read_text())
            assert state["global_step"] == step and state["max_steps"] == steps
            assert [e["step"] for e in state["log_history"]] == list(range(1, step + 1))
    # The final checkpoints are the runs' last ones, byte for byte.
    for final, run in (("trained/sft", sft), ("trained/rl", rl)):
        last = run / f"checkpoint-{checkpoints(run)[-1]}"
        assert file_hashes(family[final]) == file_hashes(last)


def test_rl_raises_the_expected_reward(family):
    """The RL objective itself (probability of a right answer when sampling), on a fixed set."""
    base = log_of(family["trained/base"])[-1]["eval_add_expected_reward"]
    curve = [e["eval_add_expected_reward"] for e in log_of(family["trained/rl"]) if "eval_add_expected_reward" in e]
    assert len(curve) == len(checkpoints(family["trained/rl_run"]))
    assert curve[-1] > base and curve[-1] > curve[0] and curve[-1] == max(curve), (base, curve)
    losses = [e["loss"] for e in log_of(family["trained/sft"])]
    assert sum(losses[-4:]) < sum(losses[:4])  # and SFT learns its new task


def test_updates_are_stored_bf16_masters(family):
    """Both finetunes start from the saved bf16 base; every stored value is an exact bf16 number."""
    base = load_file(str(family["trained/base"] / "model.safetensors"))
    for name in ("trained/sft", "trained/rl"):
        tuned = load_file(str(family[name] / "model.safetensors"))
        assert all(t.dtype == torch.bfloat16 for t in tuned.values())
        assert sum(int((tuned[k] != base[k]).sum()) for k in base) > 0
    # Embedding rows of tokens SFT never feeds (`+`, <pad>, the unused ones) get no gradient, and with no
    # weight decay in finetuning they stay bit-identical. (RL samples from the whole vocabulary: not there.)
    sft = load_file(str(family["trained/sft"] / "model.safetensors"))
    unseen = [T.PLUS, T.PAD, *range(16, CFG.vocab)]
    assert torch.equal(sft["model.embed_tokens.weight"][unseen], base["model.embed_tokens.weight"][unseen])
    seen = list(range(10)) + [T.MINUS, T.EQ, T.BOS]
    assert not torch.equal(sft["model.embed_tokens.weight"][seen], base["model.embed_tokens.weight"][seen])


def test_the_engine_analyses_the_pairs(family):
    for name in ("trained/sft", "trained/rl"):
        base = open_source(parse_source(str(family["trained/base"]), allow_any_path=True))
        tuned = open_source(parse_source(str(family[name]), allow_any_path=True))
        result = analyze(base, tuned, AnalysisOptions(tolerance=1e-5, device="cpu"))
        assert result["warnings"] == [] and result["unmatched"]["only_base"] == []
        assert 0.0 <= result["summary"]["sparsity"]["0.0"] < 1.0


def test_the_same_call_writes_the_same_bytes(tmp_path):
    tiny = replace(CFG, pretrain_steps=12, sft_steps=4, sft_save_every=2, rl_steps=4, rl_save_every=2,
                   eval_size=32)
    threads = torch.get_num_threads()
    a = T.write_trained_demo(tmp_path / "a", config=tiny)
    b = T.write_trained_demo(tmp_path / "b", config=tiny)
    assert torch.get_num_threads() == threads  # restored
    ha, hb = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    # base, sft, rl, 2 + 2 run checkpoints (3 files each); summary; the fp32 masters (weights + config.json)
    assert ha == hb and len(ha) == (3 + 2 + 2) * 3 + 1 + 3 * 2
    assert {k: v.relative_to(tmp_path / "a") for k, v in a.items()} == \
        {k: v.relative_to(tmp_path / "b") for k, v in b.items()}


def test_write_demo_adds_the_trained_names_only_when_asked(tmp_path, monkeypatch):
    assert "trained/base" not in write_demo(tmp_path / "plain")
    seen = []
    monkeypatch.setattr(T, "QUICK", replace(CFG, pretrain_steps=4, sft_steps=2, sft_save_every=2, rl_steps=2,
                                            rl_save_every=2, eval_size=16))
    out = write_demo(tmp_path / "both", trained=True, quick=True, progress=lambda f, s: seen.append((f, s)))
    assert set(T.TRAINED_NAMES) <= set(out) and {"base", "sft", "rl_a"} <= set(out)
    assert all(out[n].is_dir() for n in T.TRAINED_NAMES)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1][1] == "done"
