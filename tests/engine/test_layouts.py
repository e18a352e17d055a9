"""Which files hold the weights: one rule (worker/engine/checkpoints/layout.py) for local directories and the Hub.

Every case runs twice, on a local directory and on the same files served by the
loopback Hub (tests/hubserver.py), and must give the same answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hubserver import HubServer  # tests/ is on sys.path (tests/conftest.py's directory)
from safetensors.torch import save_file

from worker.engine import AnalysisOptions, EngineError, SourceSpec, analyze, parse_source
from worker.engine.checkpoints.hub import HubSource
from worker.engine.checkpoints.layout import is_variant, select_weights
from worker.engine.checkpoints.local import LocalSource

pytestmark = pytest.mark.timeout(120)

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


@pytest.fixture(autouse=True)
def _hf_env(hf_env):
    """Every test may open a loopback Hub (tests/engine/conftest.py)."""


class Place:
    """Checkpoints written under repos/org/<name>, opened as a local directory or a Hub repo."""

    def __init__(self, kind: str, repos: Path, hub: HubServer | None):
        self.kind, self.repos, self.hub = kind, repos, hub

    def dir(self, name: str) -> Path:
        path = self.repos / "org" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def open(self, name: str, **where):
        """The plain source (no adapter merging, which worker/engine/checkpoints/open.py adds on top)."""
        if self.kind == "local":
            return LocalSource(parse_source(str(self.repos / "org" / name), allow_any_path=True, **where))
        return HubSource(SourceSpec("hub", f"org/{name}", None, display=f"org/{name}", **where))

    def refused(self, name: str, code: str, *words: str, **where) -> EngineError:
        with pytest.raises(EngineError) as info:
            self.open(name, **where)
        assert info.value.code == code, info.value.message
        for word in words:
            assert word in info.value.message, info.value.message
        return info.value

    def requested(self, name: str) -> set[str]:
        """Files of repo org/<name> the Hub was asked for (any status); empty for local."""
        if self.hub is None:
            return set()
        return {file for repo, file in self.hub.resolve_counts() if repo == f"org/{name}"}


@pytest.fixture(params=["local", "hub"])
def place(request, tmp_path):
    repos = tmp_path / "repos"
    repos.mkdir()
    if request.param == "local":
        yield Place("local", repos, None)
        return
    server = HubServer(repos)
    with server, server.endpoint():
        yield Place("hub", repos, server)


def state(seed: int = 0, *, prefix: str = "model.") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {f"{prefix}embed_tokens.weight": torch.randn(16, 8, generator=gen).to(torch.bfloat16)}
    for i in range(3):
        out[f"{prefix}layers.{i}.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=gen).to(torch.bfloat16)
        out[f"{prefix}layers.{i}.mlp.up_proj.weight"] = torch.randn(12, 8, generator=gen).to(torch.bfloat16)
        out[f"{prefix}layers.{i}.input_layernorm.weight"] = torch.randn(8, generator=gen)
    out[f"{prefix}norm.weight"] = torch.randn(8, generator=gen)
    return out


def tuned_state() -> dict[str, torch.Tensor]:
    out = state(0)
    for name, t in out.items():
        if name.endswith("q_proj.weight"):
            out[name] = (t.float() + 0.01).to(t.dtype)
    return out


def single(directory: Path, tensors: dict, file: str = "model.safetensors", config: dict | None = CONFIG) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / file), metadata={"format": "pt"})
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def sharded(directory: Path, tensors: dict, shards: int = 3, stem: str = "model",
            index: str = "model.safetensors.index.json") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        file = f"{stem}-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (directory / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(CONFIG))
    return directory


# --- the rule ---------------------------------------------------------------------------------


def test_the_index_comes_first(place):
    d = sharded(place.dir("m"), state())
    save_file({"stale": torch.zeros(2)}, str(d / "model.safetensors"))  # an older single file beside the shards
    with place.open("m") as src:
        assert set(src.tensors) == set(state())
        assert src.files == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert "model.safetensors" not in place.requested("m")


def test_a_variant_beside_model_safetensors_is_ignored(place):
    d = single(place.dir("m"), state())
    save_file({k: v.to(torch.float16) for k, v in state(1).items()}, str(d / "model.fp16.safetensors"))
    with place.open("m") as src:
        assert src.files == ["model.safetensors"]
        assert src.tensors["model.norm.weight"].dtype == "F32"
    assert "model.fp16.safetensors" not in place.requested("m")
    with place.open("m", file="model.fp16.safetensors") as src:  # named: read
        assert src.files == ["model.fp16.safetensors"] and src.tensors["model.norm.weight"].dtype == "F16"


def test_consolidated_only_is_refused_until_named(place):
    single(place.dir("mistral"), state(prefix=""), file="consolidated.safetensors")
    error = place.refused("mistral", "no_safetensors", "consolidated.safetensors", "file=")
    assert "model.safetensors" in error.message
    assert place.requested("mistral") <= {"config.json"}  # refused from the file list alone
    with place.open("mistral", file="consolidated.safetensors") as src:
        assert set(src.tensors) == set(state(prefix=""))
        assert src.describe()["file"] == "consolidated.safetensors"


def test_weights_in_subfolders_are_listed_then_chosen_with_subfolder(place):
    root = place.dir("pipeline")
    (root / "model_index.json").write_text("{}")
    single(root / "unet", {"conv.weight": torch.randn(4, 4)}, file="diffusion_pytorch_model.safetensors",
           config={"_class_name": "UNet2DConditionModel"})
    single(root / "text_encoder", state(), config=CONFIG)
    error = place.refused("pipeline", "no_safetensors", "unet/", "text_encoder/", "subfolder=")
    assert "weights are in subfolders" in error.message

    with place.open("pipeline", subfolder="text_encoder") as src:
        assert set(src.tensors) == set(state()) and src.config == CONFIG
        assert src.files == ["text_encoder/model.safetensors"]
        assert src.describe()["subfolder"] == "text_encoder"
        assert "subfolder=text_encoder" in src.spec.label
        assert torch.equal(src.read("model.norm.weight"), state()["model.norm.weight"])
    with place.open("pipeline", subfolder="unet") as src:  # diffusers' one non-standard single file
        assert src.files == ["unet/diffusion_pytorch_model.safetensors"]
        assert src.config == {"_class_name": "UNet2DConditionModel"}
    place.refused("pipeline", "not_found", "vae", subfolder="vae")


def test_the_one_other_index_is_used(place):
    d = sharded(place.dir("big"), state(), shards=2, stem="diffusion_pytorch_model",
                index="diffusion_pytorch_model.safetensors.index.json")
    save_file({"x": torch.zeros(1)}, str(d / "diffusion_pytorch_model.fp16.safetensors"))  # a variant: ignored
    with place.open("big") as src:
        assert src.files == [f"diffusion_pytorch_model-0000{k}-of-00002.safetensors" for k in (1, 2)]


def test_pickles_beside_safetensors_are_never_requested(place):
    d = single(place.dir("m"), state())
    torch.save(state(), d / "pytorch_model.bin")
    (d / "training_args.bin").write_bytes(b"\x80\x04not a pickle")
    with place.open("m") as src:
        assert src.files == ["model.safetensors"]
        src.read("model.norm.weight")
    assert not any(f.endswith(".bin") for f in place.requested("m"))
    if place.hub is not None:
        assert not any(r.path.endswith(".bin") or (r.file or "").endswith(".bin") for r in place.hub.requests)


def test_pickle_only_is_still_refused(place):
    d = place.dir("pickled")
    torch.save(state(), d / "pytorch_model.bin")
    place.refused("pickled", "no_safetensors", "pytorch_model.bin", "pickle")
    assert not any(f.endswith(".bin") for f in place.requested("pickled"))


def test_an_adapter_is_read_when_named(place):
    d = place.dir("lora")
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 8)},
              str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    place.refused("lora", "no_safetensors", "adapter_model.safetensors", "file=")
    with place.open("lora", file="adapter_model.safetensors") as src:
        assert src.files == ["adapter_model.safetensors"] and len(src.tensors) == 1 and src.config is None


@pytest.mark.parametrize("weight_map, words", [
    (["model-00001-of-00001.safetensors"], ("weight_map",)),
    ({"model.norm.weight": 1}, ("weight_map",)),
    ({}, ("weight_map",)),
    ({"model.norm.weight": "model-00009-of-00009.safetensors"}, ("model-00009-of-00009.safetensors", "missing")),
    ({"model.norm.weight": "../other/model.safetensors"}, ("../other/model.safetensors",)),
    ({"model.norm.weight": "pytorch_model.bin"}, ("pytorch_model.bin",)),
])
def test_a_malformed_weight_map_is_refused(place, weight_map, words):
    d = place.dir("bad")
    save_file({"model.norm.weight": torch.zeros(4)}, str(d / "model-00001-of-00001.safetensors"))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    place.refused("bad", "malformed", "model.safetensors.index.json", *words)
    if place.hub is not None:
        assert place.hub.bytes_served(".safetensors") == 0


def test_an_index_that_is_not_json_is_malformed(place):
    d = place.dir("bad")
    save_file({"model.norm.weight": torch.zeros(4)}, str(d / "model-00001-of-00001.safetensors"))
    (d / "model.safetensors.index.json").write_text("{not json")
    place.refused("bad", "malformed", "model.safetensors.index.json", "JSON")


def test_sharded_and_single_file_give_identical_results(place, tmp_path):
    sharded(place.dir("base_sharded"), state(), shards=3)
    single(place.dir("base_single"), state())
    single(place.dir("tuned_single"), tuned_state())
    sharded(place.dir("tuned_sharded"), tuned_state(), shards=2)
    options = AnalysisOptions(tolerance=1e-5, rank="all", device="cpu")

    def run(base: str, tuned: str) -> tuple[dict, bytes]:
        masks = tmp_path / f"{base}-{tuned}"
        with place.open(base) as b, place.open(tuned) as t:
            result = analyze(b, t, options, masks_dir=masks)
        del result["base"], result["tuned"], result["summary"]["seconds"]
        # The mask file's header names the two checkpoints' content ids; its data must not differ.
        data = (masks / "masks.safetensors").read_bytes()
        return result, data[8 + int.from_bytes(data[:8], "little"):]

    # Rows are reported in name order and every float is summed in that order, so sharding
    # changes neither a number nor a byte of the masks.
    reference = run("base_single", "tuned_single")
    assert reference[0]["summary"]["changed"]["1e-05"] > 0
    assert run("base_sharded", "tuned_single") == reference
    assert run("base_single", "tuned_sharded") == reference
    assert run("base_sharded", "tuned_sharded") == reference


# --- the spec -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", [
    {"subfolder": "../up"}, {"subfolder": "/abs"}, {"subfolder": "a/../../b"}, {"subfolder": "a b;c"},
    {"file": "../model.safetensors"}, {"file": "/etc/passwd"}, {"file": "pytorch_model.bin"},
    {"file": "model.safetensors\\..\\x"}, {"file": ".hidden.safetensors"}, {"subfolder": "a//b"},
])
def test_bad_subfolder_or_file_is_bad_id(where):
    with pytest.raises(EngineError) as info:
        SourceSpec("hub", "org/name", **where)
    assert info.value.code == "bad_id"
    with pytest.raises(EngineError) as info:
        parse_source("org/name", **where)
    assert info.value.code == "bad_id"


def test_spec_placement_is_normalised_and_described():
    spec = parse_source("org/name@v1", subfolder="unet/", file="")
    assert (spec.subfolder, spec.file) == ("unet", None)
    assert spec.label == "org/name@v1 (subfolder=unet)"
    assert parse_source("org/name").label == "org/name"
    spec = SourceSpec("hub", "org/name", None, subfolder="a/b", file="x.safetensors.index.json")
    assert spec.placement() == {"subfolder": "a/b", "file": "x.safetensors.index.json"}


def test_a_server_subfolder_may_not_leave_the_root(tmp_path):
    root = tmp_path / "root"
    single(root / "m", state())
    (tmp_path / "outside").mkdir()
    (root / "m" / "escape").symlink_to(tmp_path / "outside")
    assert parse_source("local:m", local_root=root, subfolder="unet").subfolder == "unet"
    with pytest.raises(EngineError) as info:
        parse_source("local:m", local_root=root, subfolder="escape")
    assert info.value.code == "path_forbidden"


# --- the pure function ---------------------------------------------------------------------


def test_select_weights_on_names_alone():
    def no_json(name):
        raise AssertionError(f"{name} should not be read")

    pick = lambda names, **kw: select_weights(names, no_json, where="x", **kw)  # noqa: E731
    assert pick(["model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"]) == ["model.safetensors"]
    assert pick(["weights.safetensors", "config.json"]) == ["weights.safetensors"]
    assert pick(["a/model.safetensors", "b/model.safetensors"], subfolder="b") == ["b/model.safetensors"]
    assert pick(["a/x.safetensors"], subfolder="a", file="x.safetensors") == ["a/x.safetensors"]
    for names in (["model.fp16.safetensors"], ["consolidated.00.safetensors"], ["a.safetensors", "b.safetensors"],
                  ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]):
        with pytest.raises(EngineError) as info:
            pick(names)
        assert info.value.code == "no_safetensors" and names[0] in info.value.message and "file=" in info.value.message
    index = {"weight_map": {"w": "s-00001-of-00001.safetensors"}}
    assert select_weights(["sub/m.safetensors.index.json", "sub/s-00001-of-00001.safetensors"], lambda n: index,
                          where="x", subfolder="sub") == ["sub/s-00001-of-00001.safetensors"]


@pytest.mark.parametrize("name, variant", [
    ("model.safetensors", False), ("model.fp16.safetensors", True), ("model.fp16-00001-of-00002.safetensors", True),
    ("model-00001-of-00002.fp16.safetensors", True), ("diffusion_pytorch_model.bf16.safetensors", True),
    ("model_ema.safetensors", True), ("consolidated.safetensors", True), ("consolidated.00.safetensors", True),
    ("sd_xl_base_1.0.safetensors", False), ("cinema.safetensors", False), ("model.non_ema.safetensors", True),
    ("diffusion_pytorch_model.safetensors.index.json", False), ("model.fp16.safetensors.index.json", True),
])
def test_variants(name, variant):
    assert is_variant(name) == variant


# --- plumbing: CLI, API body, content id ----------------------------------------------------


def test_cli_subfolder_and_file_options(tmp_path, capsys):
    from app.cli.main import main

    for name, tensors in (("a", state()), ("b", tuned_state())):
        root = tmp_path / name
        single(root / "text_encoder", tensors)
        single(root / "unet", {"conv.weight": torch.zeros(4)}, file="diffusion_pytorch_model.safetensors")
    out = tmp_path / "r.json"
    code = main(["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--base-subfolder", "text_encoder",
                 "--tuned-subfolder", "text_encoder", "--tuned-file", "model.safetensors", "--json", str(out),
                 "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["base"]["subfolder"] == "text_encoder" and result["tuned"]["file"] == "model.safetensors"
    assert result["summary"]["changed"]["1e-05"] > 0

    assert main(["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--quiet"]) == 2
    assert "text_encoder/" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--base-subfolder", "../x", "--quiet"]) == 2
    assert "[bad_id]" in capsys.readouterr().err


def test_api_fields_and_analysis_id():
    from app.web.schemas import AnalysisRequest
    from app.web.submission import analysis_id

    body = AnalysisRequest(base="org/sd", tuned="org/sd-ft", base_subfolder="unet", tuned_subfolder="unet",
                           base_file="diffusion_pytorch_model.safetensors", tuned_file=None)
    assert (body.base_subfolder, body.base_file, body.tuned_file) == ("unet", "diffusion_pytorch_model.safetensors", None)
    plain = analysis_id("v", "a" * 40, "b" * 40, 1e-5, "off")
    unet = analysis_id("v", "a" * 40, "b" * 40, 1e-5, "off", base_where={"subfolder": "unet"},
                       tuned_where={"subfolder": "unet"})
    text = analysis_id("v", "a" * 40, "b" * 40, 1e-5, "off", base_where={"subfolder": "text_encoder"},
                       tuned_where={"subfolder": "text_encoder"})
    assert len({plain, unet, text}) == 3
    assert analysis_id("v", "a" * 40, "b" * 40, 1e-5, "off", base_where={}, tuned_where={}) == plain


def test_the_sources_modules_depend_one_way():
    """spec <- sources <- local <- hub_http <- hub <- open: the shared parts import no source kind,
    local imports no Hub module, and hub does not import open."""
    import ast
    import importlib

    def imported(name: str) -> set[str]:
        module = importlib.import_module(f"worker.engine.checkpoints.{name}")
        tree = ast.parse(Path(module.__file__).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    ours = "worker.engine.checkpoints."
    above = {name: {ours + m for m in later} for name, later in {
        "spec": ("sources", "local", "hub", "hub_http", "open"),
        "sources": ("local", "hub", "hub_http", "open"),
        "local": ("hub", "hub_http", "open"),
        "hub_http": ("hub", "open", "local"),
        "hub": ("open",),
    }.items()}
    for name, forbidden in above.items():
        assert not imported(name) & forbidden, name
    assert {ours + "sources", ours + "hub_http", ours + "local"} <= imported("hub")
