"""PEFT LoRA adapters as the finetuned side, against PEFT's own merge_and_unload(), bit for bit.

Tiny transformers models (Llama, GPT-2) are saved in bf16, real adapters are made with PEFT
(B randomised so the delta is not zero) and saved, and PEFT's merged model is saved beside them:
every tensor the engine reads through the adapter must equal the merged model's, and an analysis
of (base, adapter) must equal one of (base, merged) in every count. transformers and peft are
used here only; the engine never imports them.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from hubserver import HubServer  # tests/ is on sys.path (tests/conftest.py's directory)
from safetensors.torch import load_file, save_file

from worker.engine import (
    AnalysisOptions,
    EngineError,
    LoraMergedSource,
    SourceSpec,
    analyze,
    open_pair,
    open_source,
    parse_source,
)
from worker.engine.checkpoints.adapter_config import base_spec_for, parse_adapter_config

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.timeout(120)

LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64)

# name -> (family, LoraConfig fields, get_peft_model's autocast_adapter_dtype, extra perturbation)
CASES = {
    "plain": ("llama", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), True),
    # saved in bf16 (no autocast while training); PEFT upcasts to float32 when loading it
    "rslora_bf16": ("llama", dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"), False),
    "patterns": ("llama", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                               rank_pattern={"model.layers.0.self_attn.q_proj": 2, "v_proj": 4},
                               alpha_pattern={"q_proj": 4, "down_proj": 64}), True),
    # Conv1D c_attn/c_fc (in x out) and c_proj (square in attention: transposed by module type)
    "gpt2": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True), True),
    # every bias trained and saved (bias="all"), plus a LoRA bias on c_attn (lora_bias)
    "gpt2_bias": ("gpt2", dict(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True,
                               bias="all", lora_bias=True), True),
    # LoRA on the embedding (rounded to bf16 before the add) and lm_head saved whole
    "embed_save": ("llama", dict(r=8, lora_alpha=16, target_modules=["q_proj", "embed_tokens"],
                                 modules_to_save=["lm_head"]), True),
}


def _model_cls(family: str):
    return transformers.LlamaForCausalLM if family == "llama" else transformers.GPT2LMHeadModel


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Base checkpoints, adapters and PEFT-merged models, built once for the module."""
    from peft import LoraConfig, PeftModel, get_peft_model

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    bases = {}
    for family, cfg in (("llama", transformers.LlamaConfig(**LLAMA)), ("gpt2", transformers.GPT2Config(**GPT2))):
        model = _model_cls(family)(cfg).to(torch.bfloat16)
        with torch.no_grad():  # biases and norms non-trivial, so replacing them shows
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name or "ln_" in name:
                    p.add_(torch.randn_like(p) * 0.1)
        bases[family] = root / f"{family}_base"
        model.save_pretrained(bases[family])
    cases = {}
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (family, lora, autocast) in CASES.items():
            cls = _model_cls(family)
            model = get_peft_model(cls.from_pretrained(bases[family], dtype=torch.bfloat16), LoraConfig(**lora),
                                   autocast_adapter_dtype=autocast)
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if "lora_" in pname:
                        p.copy_(torch.randn(p.shape, generator=gen) * (0.01 if "_B" in pname else 0.1))
                    elif "modules_to_save" in pname or (lora.get("bias") == "all" and pname.endswith("bias")):
                        p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.01)
            adapter = root / f"{name}_adapter"
            model.save_pretrained(adapter)
            merged = PeftModel.from_pretrained(cls.from_pretrained(bases[family], dtype=torch.bfloat16),
                                               adapter).merge_and_unload()
            merged.save_pretrained(root / f"{name}_merged")
            cases[name] = {"base": bases[family], "adapter": adapter, "merged": root / f"{name}_merged"}
    return {"root": root, "bases": bases, "cases": cases}


def _open(path) -> object:
    return open_source(parse_source(str(path), allow_any_path=True))


def _counts(result: dict) -> dict:
    """Everything an analysis counts and measures, without its timing and the tuned side's identity."""
    summary = {k: v for k, v in result["summary"].items() if k not in ("seconds", "bytes_read", "device")}
    return {"summary": summary, "tensors": result["tensors"], "layers": result["layers"],
            "modules": result["modules"], "unmatched": result["unmatched"], "warnings": result["warnings"]}


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_reads_bit_equal_to_peft_merge_and_counts_equal(zoo, case):
    c = zoo["cases"][case]
    merged_state = load_file(c["merged"] / "model.safetensors")
    with _open(c["base"]) as base, _open(c["adapter"]) as tuned, _open(c["merged"]) as merged:
        assert isinstance(tuned, LoraMergedSource)
        # the base is the one adapter_config.json names
        assert tuned.base.spec.id == str(c["base"].resolve())
        assert {n: (i.dtype, i.shape) for n, i in tuned.tensors.items()} == \
            {n: (i.dtype, i.shape) for n, i in base.tensors.items()}
        changed = []
        for name in tuned.tensors:
            got, want = tuned.read(name), merged_state[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(_bits(got), _bits(want)), f"{case}: {name} differs from PEFT's merge"
            if not torch.equal(_bits(got), _bits(base.read(name))):
                changed.append(name)
        assert changed and set(changed) <= set(tuned.targets)
        options = AnalysisOptions(tolerance=1e-5, device="cpu")
        via_adapter = analyze(base, tuned, options)
        via_merged = analyze(base, merged, options)
    assert _counts(via_adapter) == _counts(via_merged)
    assert via_adapter["summary"]["changed"]["0.0"] > 0
    assert via_adapter["tuned"]["adapter"]["type"] == "LORA"


def test_describe_and_labels(zoo):
    c = zoo["cases"]["plain"]
    with _open(c["adapter"]) as tuned:
        d = tuned.describe()
        json.dumps(d)
        assert d["kind"] == "local" and d["id"] == str(c["adapter"])
        a = d["adapter"]
        assert a["r"] == 8 and a["lora_alpha"] == 16 and a["use_rslora"] is False
        assert a["target_modules"] == ["q_proj", "v_proj"] and a["base_model_name_or_path"] == str(c["base"])
        assert a["label"] == "LoRA r=8, alpha=16" and a["base_sha"] == tuned.base.sha
        # the content id covers the adapter and the base it merges onto
        assert d["sha"] not in (a["sha"], a["base_sha"])
    with _open(zoo["cases"]["rslora_bf16"]["adapter"]) as tuned:
        assert tuned.describe()["adapter"]["label"] == "LoRA r=4, alpha=8, rsLoRA"


def test_adapter_sha_changes_with_config_and_base(zoo, tmp_path):
    c = zoo["cases"]["plain"]
    copy = tmp_path / "copy"
    shutil.copytree(c["adapter"], copy)
    with _open(c["adapter"]) as a, _open(copy) as b:
        assert a.sha == b.sha  # content, not path
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 32
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    with _open(c["adapter"]) as a, _open(copy) as b:
        assert a.sha != b.sha
    with _open(zoo["bases"]["llama"]) as other_base, _open(c["merged"]) as merged_as_base:
        with open_source(parse_source(str(c["adapter"]), allow_any_path=True), base=merged_as_base) as on_other:
            assert on_other.base is merged_as_base and on_other.sha != other_base.sha


def test_base_left_empty_comes_from_the_adapter_config(zoo, tmp_path, capsys):
    from app.cli.main import main

    c = zoo["cases"]["plain"]
    base, tuned = open_pair(None, parse_source(str(c["adapter"]), allow_any_path=True))
    with base, tuned:
        assert base.spec.id == str(c["base"].resolve()) and tuned.base is base and not tuned.owns_base
    out = tmp_path / "r.json"
    assert main(["analyze", str(c["adapter"]), "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "(LoRA r=8, alpha=16)" in printed
    result = json.loads(out.read_text())
    assert result["base"]["id"] == str(c["base"]) and result["tuned"]["adapter"]["r"] == 8
    # no base and no adapter: a clear refusal
    with pytest.raises(EngineError) as err:
        open_pair(None, parse_source(str(c["merged"]), allow_any_path=True))
    assert err.value.code == "bad_request" and "base model is required" in err.value.message
    assert main(["analyze", str(c["merged"]), "--quiet"]) == 2


def test_server_rule_for_the_base_an_adapter_names(zoo, tmp_path):
    """A local base named by an adapter's config passes the local-root check like a typed path."""
    from app.core.settings import Settings
    from app.web.submission import resolve_sources

    c = zoo["cases"]["plain"]
    settings = parse_adapter_config(json.loads((c["adapter"] / "adapter_config.json").read_text()), "a")
    with pytest.raises(EngineError) as err:
        base_spec_for(settings, "a", local_root=tmp_path, allow_any_path=False)
    assert err.value.code == "path_forbidden"
    spec = base_spec_for(settings, "a", local_root=zoo["root"], allow_any_path=False)
    assert spec.display == "local:llama_base"  # never a server path

    inside = Settings(local_root=zoo["root"], data_dir=tmp_path / "data")
    base, tuned = resolve_sources(inside, None, "local:plain_adapter", None, None, None)
    with base, tuned:
        assert base.describe()["id"] == "local:llama_base" and isinstance(tuned, LoraMergedSource)
    outside = Settings(local_root=tmp_path, data_dir=tmp_path / "data")
    shutil.copytree(c["adapter"], tmp_path / "lora")
    with pytest.raises(EngineError) as err:
        resolve_sources(outside, None, "local:lora", None, None, None)
    assert err.value.code == "path_forbidden"
    with pytest.raises(EngineError) as err:
        resolve_sources(inside, None, "local:plain_merged", None, None, None)
    assert err.value.code == "bad_request"


def _variant(src, dst, *, config=None, tensors=None):
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(config)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors:
        state = load_file(dst / "adapter_model.safetensors")
        state = tensors(state)
        save_file(state, dst / "adapter_model.safetensors")
    return dst


def _refusal(path) -> EngineError:
    with pytest.raises(EngineError) as err:
        _open(path)
    assert err.value.code == "unsupported_adapter", err.value.message
    return err.value


def test_unsupported_adapters_are_refused_naming_what(zoo, tmp_path):
    from peft import IA3Config, LoraConfig, get_peft_model

    base_dir = zoo["bases"]["llama"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, config in (("ia3", IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[])),
                             ("dora", LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))):
            base = transformers.LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
            get_peft_model(base, config).save_pretrained(tmp_path / name)
    assert "IA3" in _refusal(tmp_path / "ia3").message
    assert "use_dora" in _refusal(tmp_path / "dora").message

    plain = zoo["cases"]["plain"]["adapter"]
    for i, (config, needle) in enumerate((
        ({"peft_type": "LOHA"}, "LOHA"), ({"peft_type": "LOKR"}, "LOKR"), ({"peft_type": "ADALORA"}, "ADALORA"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"), ({"init_lora_weights": "pissa"}, "pissa"),
    )):
        assert needle in _refusal(_variant(plain, tmp_path / f"v{i}", config=config)).message

    def rename(state):
        key = next(k for k in state if "layers.0.self_attn.q_proj.lora_A" in k)
        other = key.replace("lora_A", "lora_B")
        state[key.replace("q_proj", "nope_proj")] = state.pop(key)
        state[other.replace("q_proj", "nope_proj")] = state.pop(other)
        return state

    assert "not found in the base" in _refusal(_variant(plain, tmp_path / "missing", tensors=rename)).message

    def conv(state):
        key = next(k for k in state if "lora_A" in k)
        state[key] = state[key][:, :, None, None].contiguous()
        return state

    assert "convolution" in _refusal(_variant(plain, tmp_path / "conv", tensors=conv)).message

    # bias="all" on GPT-2 (which has biases) with the trained biases missing from the file
    gpt2 = zoo["cases"]["gpt2"]["adapter"]
    assert "bias='all'" in _refusal(_variant(gpt2, tmp_path / "nobias", config={"bias": "all"})).message


def test_adapter_key_forms_and_prefix_tolerance(zoo, tmp_path):
    """Older files without base_model.model., in-memory `.lora_A.default.weight`, and a base saved
    from the bare model (no `model.` prefix) all give the same merge."""
    c = zoo["cases"]["plain"]
    merged = load_file(c["merged"] / "model.safetensors")

    def in_memory(state):
        return {k.removeprefix("base_model.model.").replace(".lora_A.", ".lora_A.default.")
                .replace(".lora_B.", ".lora_B.default."): v for k, v in state.items()}

    v = _variant(c["adapter"], tmp_path / "mem", tensors=in_memory)
    with _open(v) as tuned:
        for name in tuned.targets:
            assert torch.equal(_bits(tuned.read(name)), _bits(merged[name]))
    bare = tmp_path / "bare_base"
    bare.mkdir()
    state = load_file(c["base"] / "model.safetensors")
    save_file({k.removeprefix("model."): t for k, t in state.items()}, bare / "model.safetensors")
    shutil.copy(c["base"] / "config.json", bare / "config.json")
    with _open(bare) as base, open_source(parse_source(str(c["adapter"]), allow_any_path=True), base=base) as tuned:
        for name in tuned.targets:
            assert torch.equal(_bits(tuned.read(name)), _bits(merged["model." + name]))


def test_adapter_on_the_hub(zoo, tmp_path, hf_env):
    """An adapter repo on a (loopback) Hub whose config names a Hub base: both read by range requests."""
    c = zoo["cases"]["embed_save"]
    repos = tmp_path / "repos"
    shutil.copytree(c["base"], repos / "org" / "llama-base")
    _variant(c["adapter"], repos / "org" / "llama-lora", config={"base_model_name_or_path": "org/llama-base"})
    merged = load_file(c["merged"] / "model.safetensors")
    with HubServer(repos) as hub, hub.endpoint():
        with open_source(parse_source("org/llama-lora")) as tuned:
            assert isinstance(tuned, LoraMergedSource) and tuned.base.spec == SourceSpec(
                "hub", "org/llama-base", None, display="org/llama-base")
            d = tuned.describe()
            assert d["kind"] == "hub" and d["id"] == "org/llama-lora" and d["revision"] == "main"
            assert d["adapter"]["sha"] == hub.commit_sha("org/llama-lora")
            assert d["adapter"]["base_sha"] == hub.commit_sha("org/llama-base")
            for name in tuned.tensors:
                assert torch.equal(_bits(tuned.read(name)), _bits(merged[name])), name
            with _open(c["base"]) as local_base:
                result = analyze(local_base, tuned, AnalysisOptions(device="cpu"))
        with _open(c["base"]) as local_base, _open(c["merged"]) as local_merged:
            expected = analyze(local_base, local_merged, AnalysisOptions(device="cpu"))
    assert _counts(result) == _counts(expected)


def test_a_hub_base_shared_with_its_adapter_is_read_once(zoo, tmp_path, hf_env):
    """Tensors the adapter leaves alone are the base's own bytes: one range read serves both sides."""
    c = zoo["cases"]["embed_save"]
    repos = tmp_path / "repos"
    shutil.copytree(c["base"], repos / "org" / "llama-base")
    _variant(c["adapter"], repos / "org" / "llama-lora", config={"base_model_name_or_path": "org/llama-base"})
    with HubServer(repos) as hub, hub.endpoint():
        base, tuned = open_pair(None, parse_source("org/llama-lora"))
        with base, tuned:
            hub.clear_log()
            result = analyze(base, tuned, AnalysisOptions(device="cpu"))
            weights = sum(r.body_bytes for r in hub.served() if r.file == "model.safetensors")
            untouched = sum(base.tensors[n].nbytes for n in base.tensors if n not in set(tuned.targets))
            touched = sum(base.tensors[n].nbytes for n in tuned.targets)
    with _open(c["base"]) as local_base, _open(c["merged"]) as local_merged:
        expected = analyze(local_base, local_merged, AnalysisOptions(device="cpu"))
    assert _counts(result) == _counts(expected)
    # Every base byte once for the comparison; at most the adapter's targets once more, to merge
    # them (a saved replacement, like this lm_head, needs no base bytes).
    assert untouched + touched <= weights <= untouched + 2 * touched


def test_engine_never_imports_transformers_or_peft():
    import ast
    from pathlib import Path

    import worker.engine

    for path in Path(worker.engine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("transformers", "peft")], path.name
