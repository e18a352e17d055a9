"""Lossless patches: bit-exact round trips of constructed pairs, and the refusals of apply."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.engine import EngineError, open_source, parse_source
from worker.engine.patch.apply import apply_patch, verify_patch
from worker.engine.patch.export import export_patch

ROOT = Path(__file__).resolve().parents[2]


def _src(path: Path):
    return open_source(parse_source(str(path), allow_any_path=True))


def _bits(values: list[int], dtype: torch.dtype) -> torch.Tensor:
    raw = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[dtype]
    return torch.tensor(values, dtype=torch.int64).to(raw).view(dtype)


def _pair(root: Path) -> tuple[Path, Path]:
    """A base and a finetune that differ in every way the container must carry."""
    g = torch.Generator().manual_seed(0)
    base, tuned = root / "base", root / "tuned"
    base.mkdir()
    tuned.mkdir()
    w = torch.randn(64, 48, generator=g).to(torch.bfloat16)
    w2 = w.clone()
    flat = w2.view(-1).view(torch.int16)
    flat[::7] += 1  # one bf16 step
    flat[::11] -= 3
    special_b = _bits([0x7FC0, 0x7FC1, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x3F80, 0x0001], torch.bfloat16)
    # another NaN payload, +0 -> -0, -0 -> +0, inf -> -inf, -inf kept, 1.0 -> NaN, subnormal -> 0
    special_t = _bits([0x7FC1, 0xFFC0, 0x8000, 0x0000, 0xFF80, 0xFF80, 0x7FC0, 0x0000], torch.bfloat16)
    f32 = torch.randn(33, generator=g)
    f8 = torch.randn(40, generator=g).to(torch.float8_e4m3fn)
    f8t = f8.clone()
    f8t.view(torch.uint8)[::3] ^= 1
    emb = torch.randn(10, 8, generator=g).to(torch.float16)
    emb_t = torch.cat([emb, torch.randn(3, 8, generator=g).to(torch.float16)])  # 3 new rows
    emb_t.view(torch.int16)[0, 0] += 2
    head = torch.randn(12, 8, generator=g).to(torch.bfloat16)
    master = torch.randn(16, 16, generator=g)  # fp32 in the base, bf16 in the finetune
    ints = torch.arange(20, dtype=torch.int64)
    b1 = {"model.w": w, "model.special": special_b, "model.norm": f32, "model.fp8": f8, "model.emb": emb,
          "lm_head.weight": head, "model.master": master, "model.ints": ints, "model.gone": torch.ones(4),
          "model.empty": torch.zeros(0, 4, dtype=torch.bfloat16), "model.reshaped": torch.ones(4, 6)}
    t1 = {"model.w": w2, "model.special": special_t, "model.emb": emb_t, "model.master": (master * 1.01).to(torch.bfloat16)}
    t2 = {"model.norm": f32 + torch.where(torch.arange(33) % 4 == 0, 1e-3, 0.0), "model.fp8": f8t,
          "lm_head.weight": head[:9].clone(),  # shrunk
          "model.ints": ints * 2, "model.new": torch.randn(5, 5, generator=g),
          "model.empty": torch.zeros(0, 4, dtype=torch.bfloat16), "model.reshaped": torch.ones(6, 4),
          "model.bool": torch.tensor([True, False, True])}
    save_file(b1, base / "model.safetensors", metadata={"format": "pt"})
    save_file(t1, tuned / "model-00001-of-00002.safetensors", metadata={"format": "pt", "note": "shard one"})
    save_file(t2, tuned / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in t1}, **{k: "model-00002-of-00002.safetensors" for k in t2}}
    (tuned / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    (tuned / "config.json").write_text('{"model_type": "llama"}\n')
    (tuned / "tokenizer.json").write_text('{"version": "1.0"}')
    (base / "config.json").write_text('{"model_type": "llama"}\n')
    return base, tuned


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture
def pair(tmp_path):
    base, tuned = _pair(tmp_path)
    patch = tmp_path / "p.patch"
    with _src(base) as b, _src(tuned) as t:
        summary = export_patch(b, t, patch)
    return base, tuned, patch, summary


def test_round_trip_is_bit_exact(pair, tmp_path):
    base, tuned, patch, summary = pair
    assert summary["patch_bytes"] == patch.stat().st_size and summary["changed"] > 0
    with _src(base) as b:
        apply_patch(b, patch, tmp_path / "out")
    _same_tree(tuned, tmp_path / "out")
    assert not list(tmp_path.glob(".out*"))


def test_the_container_is_plain_safetensors(pair):
    from safetensors import safe_open

    _, _, patch, _ = pair
    with safe_open(patch, "pt") as f:
        meta = f.metadata()
        assert meta["format"] == "subnetscope-patch" and meta["version"] == "1"
        manifest = json.loads(meta["manifest"])
        assert {r["name"] for r in manifest["tensors"]} >= {"model.special", "model.new", "model.bool"}
        modes = {r["name"]: (r["base"] is not None, r["cast"]) for r in manifest["tensors"]}
        assert modes["model.new"] == (False, False) and modes["model.master"] == (True, True)
        assert modes["model.reshaped"] == (False, False) and modes["model.emb"] == (True, False)


def test_wrong_base_is_refused_naming_the_tensor(pair, tmp_path):
    base, tuned, patch, _ = pair
    other = tmp_path / "other"
    other.mkdir()
    from safetensors.torch import load_file

    tensors = load_file(base / "model.safetensors")
    tensors["model.norm"] = tensors["model.norm"].clone()
    tensors["model.norm"][5] = 0.5
    save_file(tensors, other / "model.safetensors")
    with _src(other) as b, pytest.raises(EngineError, match="model.norm") as err:
        apply_patch(b, patch, tmp_path / "out")
    assert err.value.code == "incompatible"
    with _src(tuned) as b, pytest.raises(EngineError, match="Wrong base"):
        verify_patch(patch, b)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_patch_is_refused(pair, tmp_path, damage):
    base, _, patch, _ = pair
    data = bytearray(patch.read_bytes())
    if damage == "flip":
        data[-10] ^= 0x40
    else:
        data = data[: len(data) - 100]
    patch.write_bytes(bytes(data))
    with pytest.raises(EngineError) as err:
        verify_patch(patch)
    assert err.value.code == "malformed"
    with _src(base) as b, pytest.raises(EngineError):
        apply_patch(b, patch, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_output_must_be_new(pair, tmp_path):
    base, _, patch, _ = pair
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with _src(base) as b, pytest.raises(EngineError, match="already exists"):
        apply_patch(b, patch, tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x"


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())", *args, "--quiet"], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


def _no_big_files() -> None:
    # A write past 1 KiB fails with EFBIG instead of killing the process: a full disk, as the writer sees it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_cli_round_trip_and_full_disk(tmp_path):
    base, tuned = _pair(tmp_path)
    patch = tmp_path / "cli.patch"
    r = _cli("patch", "export", str(base), str(tuned), "-o", str(patch))
    assert r.returncode == 0, r.stderr
    assert "% of the tuned checkpoint" in r.stdout
    r = _cli("patch", "verify", str(patch), "--base", str(base))
    assert r.returncode == 0 and "base verified" in r.stdout, r.stderr
    r = _cli("patch", "apply", str(base), str(patch), "-o", str(tmp_path / "full"), preexec_fn=_no_big_files)
    assert r.returncode == 2 and "disk_full" in r.stderr, r.stderr
    assert not (tmp_path / "full").exists() and not list(tmp_path.glob(".full*"))
    r = _cli("patch", "apply", str(base), str(patch), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    _same_tree(tuned, tmp_path / "out")


def test_a_killed_apply_leaves_nothing_the_next_one_keeps(pair, tmp_path):
    base, tuned, patch, _ = pair
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    with _src(base) as b:
        apply_patch(b, patch, tmp_path / "out")
    assert not stale.exists()
    _same_tree(tuned, tmp_path / "out")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from worker.demo.synthetic import write_demo

    return write_demo(tmp_path_factory.mktemp("demo") / "demo", trained=False)


@pytest.mark.parametrize("tuned", ["sft", "rl_a", "resized"])
def test_the_estimate_in_every_analysis_is_within_ten_percent(demo, tmp_path, tuned):
    from worker.engine import AnalysisOptions, analyze

    with _src(demo["base"]) as b, _src(demo[tuned]) as t:
        estimate = analyze(b, t, AnalysisOptions(tolerance=1e-5))["patch"]
        summary = export_patch(b, t, tmp_path / "p.patch")
    assert abs(estimate["bytes"] - summary["patch_bytes"]) <= 0.1 * summary["patch_bytes"], (estimate, summary)
    assert estimate["share"] == pytest.approx(estimate["bytes"] / estimate["tuned_bytes"])
    with _src(demo["base"]) as b:
        apply_patch(b, tmp_path / "p.patch", tmp_path / "out")
    _same_tree(demo[tuned], tmp_path / "out")


@pytest.mark.parametrize("prefix, what", [("_orig_mod.", "torch.compile"), ("module.", "DistributedDataParallel")])
def test_wrapper_prefixes_are_named(tmp_path, prefix, what):
    from worker.engine.pairing.pairs import pair_tensors

    tensors = {f"model.layers.{i}.w": torch.ones(2, 2) for i in range(3)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file(tensors, tmp_path / "a" / "model.safetensors")
    save_file({prefix + k: v for k, v in tensors.items()}, tmp_path / "b" / "model.safetensors")
    with _src(tmp_path / "a") as a, _src(tmp_path / "b") as b:
        warnings = pair_tensors(a, b).warnings
    assert any(what in w and prefix in w for w in warnings), warnings
    assert not any("bare model" in w for w in warnings)


def test_export_from_the_hub_and_apply_onto_a_hub_base(tmp_path, hf_env):
    """Headers and the index come by range requests; the weights the patch needs, by range reads."""
    from hubserver import HubServer

    from worker.engine import SourceSpec

    repos = tmp_path / "repos"
    base, tuned = _pair(tmp_path)
    shutil.copytree(base, repos / "org" / "base")
    shutil.copytree(tuned, repos / "org" / "tuned")
    with HubServer(repos) as server, server.endpoint():
        def hub(name):
            return open_source(SourceSpec("hub", f"org/{name}", None, display=f"org/{name}"))

        with hub("base") as b, hub("tuned") as t:
            export_patch(b, t, tmp_path / "hub.patch")
        with hub("base") as b:
            apply_patch(b, tmp_path / "hub.patch", tmp_path / "out")
    for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"):
        assert (tmp_path / "out" / f).read_bytes() == (tuned / f).read_bytes(), f


def test_block_scaled_fp8_codes_and_scales_round_trip(tmp_path):
    """DeepSeek-V3 layout: the patch works on the stored codes and scales, not the dequantized view."""
    config = '{"model_type": "deepseek_v3", "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}'
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(200, 160, generator=g).to(torch.float8_e4m3fn)
    scales = torch.rand(2, 2, generator=g) + 0.5
    tuned_codes = codes.clone()
    tuned_codes.view(torch.uint8)[::5, ::3] ^= 1
    tuned_scales = scales.clone()
    tuned_scales[1, 0] *= 1.5
    for name, (c, s) in (("base", (codes, scales)), ("tuned", (tuned_codes, tuned_scales))):
        (tmp_path / name).mkdir()
        save_file({"model.layers.0.mlp.down_proj.weight": c, "model.layers.0.mlp.down_proj.weight_scale_inv": s},
                  tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(config)
    with _src(tmp_path / "base") as b, _src(tmp_path / "tuned") as t:
        assert "model.layers.0.mlp.down_proj.weight_scale_inv" not in t.tensors  # the analysis's view
        export_patch(b, t, tmp_path / "p.patch")
    with _src(tmp_path / "base") as b:
        apply_patch(b, tmp_path / "p.patch", tmp_path / "out")
    _same_tree(tmp_path / "tuned", tmp_path / "out")


def test_apply_sigkilled_mid_write_leaves_no_output(tmp_path):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4096, 8192, generator=g).to(torch.bfloat16)  # 64 MiB: the rebuild takes a while
    t = w.clone()
    t.view(-1).view(torch.int16)[::9] += 1
    for name, x in (("base", w), ("tuned", t)):
        (tmp_path / name).mkdir()
        save_file({"w": x}, tmp_path / name / "model.safetensors")
    with _src(tmp_path / "base") as b, _src(tmp_path / "tuned") as tt:
        export_patch(b, tt, tmp_path / "p.patch")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
                             "patch", "apply", str(tmp_path / "base"), str(tmp_path / "p.patch"), "-o",
                             str(tmp_path / "out"), "--quiet"], env=env)
    partial = None
    for _ in range(60_000):
        found = list(tmp_path.glob(".out.partial-*/model.safetensors"))
        if found or proc.poll() is not None:
            partial = found[0].parent if found else None
            break
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    if partial is None:
        pytest.skip("the apply finished before it could be killed")
    assert not (tmp_path / "out").exists()
    with _src(tmp_path / "base") as b:
        apply_patch(b, tmp_path / "p.patch", tmp_path / "out")
    assert not partial.exists()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "tuned" / "model.safetensors").read_bytes()
