"""The engine on real (tiny) checkpoints of many architectures, against a float64 reference.

The reference reads both sides with `safetensors.torch.load_file`, pairs names itself (a
one-sided prefix dropped, tied tensors counted once because transformers saves them once) and
recomputes every per-tensor number with tests/engine/reference.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.engine import CURVE_TOLERANCES, EXACT_TOLERANCES, AnalysisOptions, analyze, open_source, parse_source

from .build import ENTRY_ORDER, Entry, build_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from reference import tensor_stats  # noqa: E402  (tests/engine/reference.py)

TOLERANCE = 1e-5
OPTIONS = dict(tolerance=TOLERANCE, rank="all")
LORA = [n for n in ENTRY_ORDER if n.endswith("_lora")]

# The naming rule of docs/METRICS.md "Structure and magnitude", written out independently of the engine.
STACK_WORDS = {"layers", "layer", "h", "blocks", "block"}
PARAM_WORDS = {"weight", "bias", "gamma", "beta", "scale"}


def expected_location(name: str) -> tuple[str | None, int | None, str, int | None]:
    """(stack, layer, module, expert) of a reported tensor name."""
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in PARAM_WORDS:
        parts = parts[:-1]
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit() and parts[i - 1] in STACK_WORDS:
            inner, expert = parts[i + 1:], None
            for j in range(1, len(inner)):
                if inner[j].isdigit() and inner[j - 1] == "experts" and expert is None:
                    expert, inner = int(inner[j]), inner[:j] + ["*"] + inner[j + 1:]
            return ".".join(parts[:i]), int(parts[i]), ".".join(inner), expert
    return None, None, ".".join(parts), None


def load_state(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        part = load_file(str(f))
        assert not (part.keys() & state.keys()), f"tensor saved twice in {directory}"
        state.update(part)
    return state


def reference_pairs(entry: Entry, base: dict, tuned: dict) -> tuple[dict[str, tuple[str, str]], list[str], list[str]]:
    """reported name -> (base name, tuned name); names only in base; names only in tuned."""
    short = {(n[len(entry.prefix):] if entry.prefix and n.startswith(entry.prefix) else n): n for n in tuned}
    common = {short[s]: (s, short[s]) for s in short.keys() & base.keys()}
    return common, sorted(base.keys() - short.keys()), sorted(short[s] for s in short.keys() - base.keys())


def curve_reference(b: torch.Tensor, t: torch.Tensor) -> list[int]:
    """changed(t) = #NaN + #(|delta| > t) at every curve tolerance, from sorted float64 |delta|."""
    d = t.double() - b.double()
    d = torch.where(t.double() == b.double(), torch.zeros_like(d), d).flatten()
    nan = torch.isnan(d)
    a = torch.sort(d[~nan].abs()).values
    ts = torch.tensor(CURVE_TOLERANCES, dtype=torch.float64)
    return (int(nan.sum()) + a.numel() - torch.searchsorted(a, ts, right=True)).tolist()


def _open(path: Path):
    return open_source(parse_source(str(path), allow_any_path=True))


def run_analysis(base_dir: Path, tuned_dir: Path) -> dict:
    with _open(base_dir) as b, _open(tuned_dir) as u:
        return analyze(b, u, AnalysisOptions(**OPTIONS))


@pytest.fixture(scope="session")
def analyses(corpus):
    """Each entry's analysis, computed once per session on first use."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = run_analysis(corpus[name].base_dir, corpus[name].tuned_dir)
        return cache[name]

    return get


# --- the corpus itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENTRY_ORDER)
def test_corpus_entry_is_what_it_claims(corpus, name):
    e = corpus[name]
    for side, directory, sharded in (("base", e.base_dir, e.sharded[0]), ("tuned", e.tuned_dir, e.sharded[1])):
        assert (directory / "config.json").exists(), side
        index = directory / "model.safetensors.index.json"
        assert index.exists() == sharded, (side, "sharded" if sharded else "single file")
        if sharded:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert len(set(weight_map.values())) > 1 and set(weight_map) == set(load_state(directory))
    base, tuned = load_state(e.base_dir), load_state(e.tuned_dir)
    assert {t.dtype for t in base.values()} == {t.dtype for t in tuned.values()} == {torch.bfloat16}
    common, only_base, only_tuned = reference_pairs(e, base, tuned)
    assert (tuple(only_base), tuple(only_tuned)) == (e.only_base, e.only_tuned)
    if e.prefix:
        assert not any(n.startswith(e.prefix) for n in base) and all(n.startswith(e.prefix) for n in common)
    changed = {n for n, (bn, tn) in common.items() if not torch.equal(base[bn], tuned[tn])}
    same = sum(int((base[bn] == tuned[tn]).sum()) for bn, tn in common.values())
    assert changed and same, "a finetune changes some elements and leaves others bit-identical"
    if e.layout == "lora":
        cfg = json.loads((e.adapter_dir / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(e.base_dir) and cfg["peft_type"] == "LORA"
        assert cfg["r"] == e.adapter["r"] and cfg["target_modules"] and (e.adapter_dir / "adapter_model.safetensors").exists()
        targets = set(e.adapter["target_modules"])
        assert changed == {n for n in common if n.split(".")[-2] in targets and n.endswith(".weight")}
    if name.startswith("llava"):
        vision = [n for n in changed if "vision_tower" in n and ".layers." in n]
        assert vision, "the image steps moved the vision tower"
        assert not any(".layers.1." in n and "vision_tower" in n for n in changed), "vision_feature_layer=-2: last layer idle"
        assert any("multi_modal_projector" in n for n in changed) and any("language_model" in n for n in changed)


def test_corpus_is_deterministic(corpus, tmp_path):
    again = build_corpus(tmp_path, only=["gpt2", "gpt2_lora"])

    def digest(directory: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.glob("*.safetensors"))}

    for name in ("gpt2", "gpt2_lora"):
        assert digest(again[name].base_dir) == digest(corpus[name].base_dir)
        assert digest(again[name].tuned_dir) == digest(corpus[name].tuned_dir)
    assert digest(again["gpt2_lora"].adapter_dir) == digest(corpus["gpt2_lora"].adapter_dir)


# --- every count against the float64 reference ---------------------------------------------------------

@pytest.mark.parametrize("name", ENTRY_ORDER)
def test_every_count_matches_the_float64_reference(corpus, analyses, name):
    e = corpus[name]
    result = analyses(name)
    base, tuned = load_state(e.base_dir), load_state(e.tuned_dir)
    common, only_base, only_tuned = reference_pairs(e, base, tuned)

    un = result["unmatched"]
    assert un["only_base"] == only_base == list(e.only_base)
    assert un["only_tuned"] == only_tuned == list(e.only_tuned)
    for key in ("shape_mismatch", "resized", "dtype_mismatch", "unsupported", "tied"):
        assert not un.get(key), (key, un.get(key))

    records = {r["name"]: r for r in result["tensors"]}
    assert len(records) == len(result["tensors"]), "a tensor reported twice"
    assert set(records) == set(common)
    ref_numel = sum(base[bn].numel() for bn, _ in common.values())
    s = result["summary"]
    assert s["numel"] == sum(r["numel"] for r in records.values()) == ref_numel
    assert s["tensors"] == len(common) and s["added"] == 0 and s["nan"] == 0

    tolerances = list(EXACT_TOLERANCES)
    totals = dict.fromkeys((repr(float(t)) for t in tolerances), 0)
    for rname, (bn, tn) in common.items():
        rec, b, t = records[rname], base[bn], tuned[tn]
        assert (rec["dtype"], rec["tuned_dtype"], rec["compare_dtype"]) == ("bfloat16",) * 3, rname
        assert rec["shape"] == list(b.shape) and rec["added"] == 0, rname
        ref = tensor_stats(b, t, tolerances, TOLERANCE, want_rank=b.dim() == 2)
        assert rec["numel"] == ref["numel"], rname
        assert rec["changed"] == ref["changed"], rname
        assert rec["nan"] == ref["nan"], rname
        assert rec["ulp"] == ref["ulp"], rname
        assert rec["curve_changed"] == curve_reference(b, t), rname
        assert rec["delta_fro"] == pytest.approx(ref["delta_fro"], rel=1e-9, abs=1e-30), rname
        assert rec["base_fro"] == pytest.approx(ref["base_fro"], rel=1e-9, abs=1e-30), rname
        assert rec["max_abs_delta"] == ref["max_abs_delta"], rname  # a bf16 difference is exact in float32
        if b.dim() == 2:
            assert rec["row_coverage"] == pytest.approx(ref["row_coverage"], abs=1e-12), rname
            assert rec["col_coverage"] == pytest.approx(ref["col_coverage"], abs=1e-12), rname
            assert rec["rank"] == ref["rank"], rname
            assert rec["rank_ratio"] == pytest.approx(ref["rank"] / min(b.shape)), rname
        else:
            assert rec["row_coverage"] is None and rec["col_coverage"] is None, rname
            assert rec["rank"] is None and rec["rank_ratio"] is None, rname
        for k in totals:
            totals[k] += ref["changed"][k]
    assert s["changed"] == totals
    assert s["sparsity"] == {k: pytest.approx(1 - c / ref_numel) for k, c in totals.items()}
    # not vacuous: every entry has both changed and unchanged elements at 1e-5
    assert 0 < totals["1e-05"] < ref_numel


# --- names: stacks, layers, modules, experts -----------------------------------------------------------

@pytest.mark.parametrize("name", ENTRY_ORDER)
def test_stacks_layers_modules_and_experts(corpus, analyses, name):
    e = corpus[name]
    records = analyses(name)["tensors"]
    for r in records:
        got = (r.get("stack"), r.get("layer"), r.get("module"), r.get("expert"))
        assert got == expected_location(r["name"]), r["name"]
    stacks = {r["stack"] for r in records if r["stack"] is not None}
    assert stacks == set(e.stacks)
    for stack in stacks:
        assert {r["layer"] for r in records if r["stack"] == stack} == set(range(e.layers)), stack
    present = {(r["stack"], r["module"]) for r in records}
    missing = [m for m in e.modules if m not in present]
    assert not missing, f"modules not reported: {missing}; have {sorted(present, key=str)}"
    experts: dict[tuple, set[int]] = {}
    for r in records:
        if ".experts.*" in r["module"]:
            experts.setdefault((r["stack"], r["layer"], r["module"]), set()).add(r["expert"])
        else:
            assert r["expert"] is None, r["name"]
    if e.experts:
        assert experts and all(v == set(range(e.experts)) for v in experts.values()), experts
    else:
        assert not experts


def test_bert_attention_output_and_output_dense_stay_distinct(corpus, analyses):
    result = analyses("bert")
    modules = [m["module"] for m in result["modules"]]
    assert "attention.output.dense" in modules and "output.dense" in modules
    assert len(modules) == len(set(modules))
    by_module = {m["module"]: m for m in result["modules"]}
    # 2 layers x (32x32 + 32) vs 2 layers x (32x64 + 32)
    assert by_module["attention.output.dense"]["numel"] == 2 * (32 * 32 + 32)
    assert by_module["output.dense"]["numel"] == 2 * (32 * 64 + 32)


@pytest.mark.parametrize("name", ENTRY_ORDER)
def test_layer_groups_are_per_stack(analyses, name):
    result = analyses(name)
    records = result["tensors"]
    groups = result["layers"]
    keys = [(g["stack"], g["layer"]) for g in groups]
    assert len(keys) == len(set(keys))
    assert set(keys) == {(r["stack"], r["layer"]) for r in records}
    for g in groups:
        members = [r for r in records if (r["stack"], r["layer"]) == (g["stack"], g["layer"])]
        assert g["numel"] == sum(r["numel"] for r in members)
        assert g["changed"] == {k: sum(r["changed"][k] for r in members) for k in g["changed"]}
        assert (g["stack"] is None) == (g["layer"] is None)


# --- LoRA adapters as the finetuned side ---------------------------------------------------------------

@pytest.mark.parametrize("name", LORA)
def test_adapter_read_as_merged_model_is_bit_equal_to_peft_merge(corpus, name):
    """Waits for worker/engine/checkpoints/lora.py: an adapter directory opened as a source is W + s * B @ A."""
    e = corpus[name]
    with _open(e.adapter_dir) as adapter, _open(e.tuned_dir) as merged:
        assert set(adapter.tensors) == set(merged.tensors)
        for n, info in merged.tensors.items():
            a = adapter.read(n)
            m = merged.read(n)
            assert a.dtype == m.dtype and a.shape == m.shape, n
            assert torch.equal(a.view(torch.int16), m.view(torch.int16)), f"{n}: not bit-equal to PEFT's merge"


@pytest.mark.parametrize("name", LORA)
def test_adapter_analysis_equals_merged_analysis(corpus, analyses, name):
    e = corpus[name]
    via_adapter = run_analysis(e.base_dir, e.adapter_dir)
    merged = analyses(name)
    assert via_adapter["tensors"] == merged["tensors"]
    volatile = {"seconds", "bytes_read", "device"}
    assert {k: v for k, v in via_adapter["summary"].items() if k not in volatile} == \
           {k: v for k, v in merged["summary"].items() if k not in volatile}
    for key in ("layers", "modules", "unmatched"):
        assert via_adapter[key] == merged[key], key


# --- the table for the report (pytest -s) ----------------------------------------------------------------

def test_corpus_table(corpus_build, analyses):
    corpus = corpus_build["entries"]
    lines = [f"corpus of {len(corpus)} entries built in {corpus_build['seconds']:.1f} s",
             f"{'entry':12s} {'arch':30s} {'layout':16s} {'tensors':>7s} {'numel':>7s} {'sparsity@1e-5':>13s} "
             f"{'sparsity@0':>10s}  stacks"]
    for name in ENTRY_ORDER:
        e = corpus[name]
        try:
            s = analyses(name)["summary"]
        except Exception as exc:  # noqa: BLE001 - the table reports, the tests above fail
            lines.append(f"{name:12s} {e.arch:30s} {e.layout:16s} error: {exc}")
            continue
        lines.append(f"{name:12s} {e.arch:30s} {e.layout:16s} {s['tensors']:7d} {s['numel']:7d} "
                     f"{100 * s['sparsity']['1e-05']:12.2f}% {100 * s['sparsity']['0.0']:9.2f}%  {', '.join(sorted(e.stacks))}")
    print("\n" + "\n".join(lines))
