"""HubSource against a loopback server that speaks the Hub's HTTP protocol (tests/hubserver.py).

Real safetensors files, real HTTP over loopback, the real huggingface_hub client:
only the address of the Hub differs from production.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from hubserver import HubServer, use_endpoint  # tests/ is on sys.path (tests/conftest.py's directory)
from huggingface_hub import constants, snapshot_download
from safetensors.torch import load_file, save_file

from worker.demo.synthetic import write_demo
from worker.engine import AnalysisOptions, EngineError, Piece, SourceSpec, analyze, check_compatible, open_source
from worker.engine.checkpoints.hub import HubSource

pytestmark = pytest.mark.timeout(120)

TOKEN = "hf_loopbackSecretToken123"


@pytest.fixture(autouse=True)
def _hf_env(hf_env):
    """Every test here talks to a loopback Hub (tests/engine/conftest.py)."""


@pytest.fixture
def repos(tmp_path) -> Path:
    root = tmp_path / "repos"
    root.mkdir()
    return root


@pytest.fixture
def hub(repos):
    server = HubServer(repos, gated={"org/gated": {TOKEN}}, private={"org/private": {TOKEN}})
    with server, server.endpoint():
        yield server


def hub_spec(repo: str, revision: str | None = None) -> SourceSpec:
    return SourceSpec("hub", repo, revision, display=repo)


def sample_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small model with the dtypes and shapes a real one has, including many small 1-D norms."""
    gen = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(64, 32, generator=gen).to(torch.bfloat16)}
    for i in range(3):
        p = f"model.layers.{i}."
        state[p + "self_attn.q_proj.weight"] = torch.randn(32, 32, generator=gen).to(torch.bfloat16)
        state[p + "mlp.up_proj.weight"] = torch.randn(48, 32, generator=gen).to(torch.float16)
        state[p + "input_layernorm.weight"] = torch.randn(32, generator=gen)
        state[p + "post_attention_layernorm.weight"] = torch.randn(32, generator=gen)
    state["model.layers.0.mlp.fp8.weight"] = torch.randn(16, 16, generator=gen).to(torch.float8_e4m3fn)
    state["model.norm.weight"] = torch.randn(32, generator=gen)
    state["model.empty"] = torch.zeros(0, 32, dtype=torch.bfloat16)
    return state


def write_repo(directory: Path, state: dict[str, torch.Tensor], *, shards: int = 1, config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for k in range(shards):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n] for n in names[k::shards]}
            save_file(part, str(directory / file), metadata={"format": "pt"})
            weight_map.update({n: file for n in part})
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "config.json").write_text(json.dumps(config or {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return directory


def reference(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def header_bytes(directory: Path) -> int:
    """8 + N for every safetensors file: what reading the headers costs."""
    return sum(8 + struct.unpack("<Q", f.read_bytes()[:8])[0] for f in directory.glob("*.safetensors"))


def all_pieces(source, step: int = 100) -> list[Piece]:
    return [Piece(n, s, min(s + step, info.numel)) for n, info in source.tensors.items() for s in range(0, max(info.numel, 1), step)]


def read_all(source, pieces: list[Piece]) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for piece, tensor in source.iter_pieces(pieces):
        parts.setdefault(piece.name, []).append(tensor.clone())
    return {n: torch.cat(p).reshape(source.tensors[n].shape) for n, p in parts.items()}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, whatever the dtype (fp8 has no eq kernel on every build)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


# --- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 3])
def test_tensors_read_over_http_equal_the_files(hub, repos, shards):
    directory = write_repo(repos / "org" / "model", sample_state(), shards=shards)
    expected = reference(directory)

    with HubSource(hub_spec("org/model")) as source:
        assert source.sha == hub.commit_sha("org/model")
        assert set(source.tensors) == set(expected)
        assert source.config["model_type"] == "llama"
        for name, tensor in expected.items():
            assert same(source.read(name), tensor), name
        streamed = read_all(source, all_pieces(source, step=37))
        assert all(same(streamed[n], expected[n]) for n in expected)


def test_open_source_dispatches_hub_specs(hub, repos):
    write_repo(repos / "org" / "model", sample_state())
    source = open_source(hub_spec("org/model"))
    assert isinstance(source, HubSource)
    assert source.describe() == {"kind": "hub", "id": "org/model", "revision": "main", "sha": hub.commit_sha("org/model")}


def test_headers_are_read_with_range_requests_before_any_weight_byte(hub, repos):
    directory = write_repo(repos / "org" / "model", sample_state(), shards=2)

    HubSource(hub_spec("org/model"))

    weights = hub.served(suffix=".safetensors", method="GET")
    assert weights and all(r.range for r in weights), "every safetensors read must be a range request"
    assert hub.bytes_served(".safetensors") == header_bytes(directory)
    assert not hub.served(suffix=".bin")


def test_only_the_weights_asked_for_are_downloaded_and_small_tensors_are_coalesced(hub, repos):
    directory = write_repo(repos / "org" / "model", sample_state())
    source = HubSource(hub_spec("org/model"))
    hub.clear_log()

    # File order, whole tensors: the 1-D norms between matrices touch each other on disk.
    ordered = sorted(source.tensors.values(), key=lambda t: t.offset)
    pieces = [Piece(t.name, 0, t.numel) for t in ordered]
    streamed = read_all(source, pieces)

    expected = reference(directory)
    assert all(same(streamed[n], expected[n]) for n in expected)
    assert hub.bytes_served(".safetensors") == source.total_bytes
    requests = [r for r in hub.served(suffix=".safetensors") if r.body_bytes]
    assert source.total_bytes < source.request_bytes
    assert len(requests) == 1, "tensors that touch on disk, in file order, should share one request"

    hub.clear_log()
    name = "model.layers.1.self_attn.q_proj.weight"
    assert same(source.read(name), expected[name])
    assert hub.bytes_served(".safetensors") == source.tensors[name].nbytes


def test_an_expired_cdn_url_is_renewed_through_the_hub(hub, repos):
    directory = write_repo(repos / "org" / "model", sample_state())
    source = HubSource(hub_spec("org/model"))
    hub.expire_cdn_urls()
    hub.clear_log()

    name = "model.layers.0.mlp.up_proj.weight"
    assert same(source.read(name), reference(directory)[name])
    statuses = [(r.path.split("/")[1], r.status) for r in hub.requests]
    assert statuses == [("blobs", 403), ("org", 302), ("blobs", 206)]


def test_prefetch_stays_within_budget_and_stops_when_the_consumer_does(hub, repos):
    state = {f"model.layers.{i}.w": torch.randn(256, 256) for i in range(8)}  # 256 KiB each
    write_repo(repos / "org" / "model", state)
    source = HubSource(hub_spec("org/model"))
    source.prefetch_bytes = 512 << 10
    source.request_bytes = 256 << 10
    hub.clear_log()

    stream = source.iter_pieces([Piece(n, 0, info.numel) for n, info in sorted(source.tensors.items())])
    next(stream)
    stream.close()

    # One consumed, at most the budget's worth in flight: never the whole file.
    assert hub.bytes_served(".safetensors") <= (256 << 10) + source.prefetch_bytes


@pytest.mark.parametrize("lfs_redirect", [True, False], ids=["cdn", "direct"])
def test_a_revision_resolves_to_its_commit_and_reads_stay_pinned(repos, lfs_redirect):
    hub = HubServer(repos, lfs_redirect=lfs_redirect)
    with hub, hub.endpoint():
        check_pinned(hub, repos)


def check_pinned(hub: HubServer, repos: Path) -> None:
    old = sample_state(seed=1)
    write_repo(repos / "org" / "model", old)
    write_repo(repos / "org" / "model@v1", sample_state(seed=2))

    tagged = HubSource(hub_spec("org/model", "v1"))
    assert tagged.sha == hub.commit_sha("org/model", "v1")
    assert tagged.describe()["revision"] == "v1"

    main = HubSource(hub_spec("org/model"))
    first_sha = main.sha
    assert first_sha != tagged.sha

    # The branch moves after the source was opened: its reads keep the commit it resolved.
    write_repo(repos / "org" / "model", sample_state(seed=3))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert same(main.read(name), old[name])
    moved = HubSource(hub_spec("org/model"))
    assert moved.sha != first_sha
    assert not same(moved.read(name), old[name])

    by_sha = HubSource(hub_spec("org/model", first_sha))
    assert by_sha.sha == first_sha and same(by_sha.read(name), old[name])


# --- errors ---------------------------------------------------------------------------------


def refused(code: str, spec: SourceSpec, *words: str, **kwargs) -> EngineError:
    with pytest.raises(EngineError) as info:
        HubSource(spec, **kwargs)
    assert info.value.code == code, info.value.message
    for word in words:
        assert word.lower() in info.value.message.lower(), info.value.message
    return info.value


def test_unknown_repo_is_not_found(hub):
    refused("not_found", hub_spec("org/nothing-here"), "org/nothing-here", "not found")


def test_unknown_revision_is_revision_not_found(hub, repos):
    write_repo(repos / "org" / "model", sample_state())
    refused("revision_not_found", hub_spec("org/model", "no-such-branch"), "no-such-branch", "org/model")


def test_pickle_only_repo_is_refused_without_downloading_the_pickle(hub, repos):
    directory = repos / "org" / "pickled"
    directory.mkdir(parents=True)
    torch.save(sample_state(), directory / "pytorch_model.bin")
    (directory / "config.json").write_text("{}")

    refused("no_safetensors", hub_spec("org/pickled"), "pytorch_model.bin", "pickle")
    assert hub.served(suffix=".bin") == []
    assert not any(r.path.endswith(".bin") for r in hub.requests)


def test_a_malformed_header_fails_before_any_weight_byte(hub, repos):
    directory = write_repo(repos / "org" / "broken", sample_state())
    raw = bytearray((directory / "model.safetensors").read_bytes())
    (directory / "model.safetensors").write_bytes(raw[:-10])  # truncated: offsets run past the end

    refused("malformed", hub_spec("org/broken"), "model.safetensors", "truncated")
    n = struct.unpack("<Q", raw[:8])[0]
    assert hub.bytes_served(".safetensors") == 8 + n


def test_an_index_naming_a_missing_shard_is_malformed(hub, repos):
    directory = write_repo(repos / "org" / "sharded", sample_state(), shards=2)
    (directory / "model-00002-of-00002.safetensors").unlink()
    refused("malformed", hub_spec("org/sharded"), "model-00002-of-00002.safetensors", "index")
    assert hub.bytes_served(".safetensors") == 0


def test_a_mismatched_pair_fails_before_any_weight_byte(hub, repos):
    write_repo(repos / "org" / "llama", sample_state())
    other = {f"transformer.h.{i}.attn.c_attn.weight": torch.randn(8, 8) for i in range(4)}
    write_repo(repos / "org" / "gpt2", other, config={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    base, tuned = HubSource(hub_spec("org/llama")), HubSource(hub_spec("org/gpt2"))
    headers_only = hub.bytes_served(".safetensors")

    with pytest.raises(EngineError) as info:
        analyze(base, tuned, AnalysisOptions(device="cpu"))
    assert info.value.code == "arch_mismatch"
    assert hub.bytes_served(".safetensors") == headers_only


def test_gated_repo_needs_a_token_with_access(hub, repos, monkeypatch):
    directory = write_repo(repos / "org" / "gated", sample_state())

    refused("gated", hub_spec("org/gated"), "org/gated", "token", "license")
    refused("gated", hub_spec("org/gated"), "org/gated", "token", token="hf_someoneElsesToken")

    source = HubSource(hub_spec("org/gated"), token=TOKEN)
    name = "model.norm.weight"
    assert same(source.read(name), reference(directory)[name])

    # The token reaches the Hub, never the CDN it redirects to, and never anything we keep or show.
    assert any(r.authorization == f"Bearer {TOKEN}" for r in hub.requests)
    assert all(r.authorization is None for r in hub.requests if r.path.startswith("/blobs/"))
    shown = [repr(source), json.dumps(source.describe()), str(vars(source)), source.spec.label]
    assert not any(TOKEN in text for text in shown)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(source)

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub's default: the environment's token
    assert HubSource(hub_spec("org/gated")).sha == source.sha


def test_token_never_appears_in_error_messages(hub, repos):
    write_repo(repos / "org" / "gated", sample_state())
    error = refused("gated", hub_spec("org/gated"), token="hf_wrongSecret42")
    assert "hf_wrongSecret42" not in error.message and "hf_wrongSecret42" not in str(error)
    error = refused("not_found", hub_spec("org/nothing"), token="hf_wrongSecret42")
    assert "hf_wrongSecret42" not in error.message


def test_private_repo_reads_as_missing_without_a_token(hub, repos):
    write_repo(repos / "org" / "private", sample_state())
    refused("not_found", hub_spec("org/private"), "org/private", "private", "token")
    assert HubSource(hub_spec("org/private"), token=TOKEN).sha == hub.commit_sha("org/private")


def test_server_errors_are_retried_then_reported_as_transient(hub, repos):
    write_repo(repos / "org" / "model", sample_state())

    hub.fail_next(2, status=503, match="resolve|blobs")
    source = HubSource(hub_spec("org/model"))
    assert source.sha == hub.commit_sha("org/model")

    hub.fail_next(HubSource.retries + 1, status=502, match="/api/models/")
    refused("transient", hub_spec("org/model"), "try again")

    hub.fail_next(HubSource.retries + 1, status=500, match="blobs")
    with pytest.raises(EngineError) as info:
        source.read("model.norm.weight")
    assert info.value.code == "transient"


def test_network_down_is_transient(repos):
    server = HubServer(repos).start()
    url = server.url
    server.stop()  # nothing listens on that port any more
    with use_endpoint(url):
        refused("transient", hub_spec("org/model"), "hub", "network")


# --- offline cache --------------------------------------------------------------------------


def write_cache(cache: Path, repo: str, sha: str, directory: Path, ref: str = "main") -> Path:
    """The standard layout: blobs/<etag>, snapshots/<sha>/<file> -> ../../blobs/<etag>, refs/<ref>."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for file in sorted(directory.iterdir()):
        blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()  # an LFS file's etag
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(sha)
    return snapshot


def test_offline_mode_reads_the_hf_cache(repos, monkeypatch):
    directory = write_repo(repos / "org" / "model", sample_state(), shards=2)
    sha = "1234567890abcdef1234567890abcdef12345678"
    write_cache(Path(constants.HF_HUB_CACHE), "org/model", sha, directory)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with use_endpoint("http://127.0.0.1:9"):  # nothing must be asked of any server
        source = open_source(hub_spec("org/model"))
        assert source.sha == sha
        assert source.describe() == {"kind": "hub", "id": "org/model", "revision": "main", "sha": sha}
        expected = reference(directory)
        streamed = read_all(source, all_pieces(source))
        assert all(same(streamed[n], expected[n]) for n in expected)
        assert source.config["model_type"] == "llama"

        by_sha = HubSource(hub_spec("org/model", sha))
        assert set(by_sha.tensors) == set(expected)

        refused("not_found", hub_spec("org/model", "v2"), "offline", "cache")
        refused("not_found", hub_spec("org/uncached"), "offline", "HF_HUB_OFFLINE")


def test_offline_mode_reads_a_cache_filled_by_huggingface_hub(hub, repos, monkeypatch):
    directory = write_repo(repos / "org" / "model", sample_state())
    snapshot_download("org/model")  # through the loopback Hub, with huggingface_hub's own downloader
    sha = hub.commit_sha("org/model")
    hub.stop()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    source = HubSource(hub_spec("org/model"))
    assert source.sha == sha
    name = "model.layers.2.mlp.up_proj.weight"
    assert same(source.read(name), reference(directory)[name])


# --- end to end -----------------------------------------------------------------------------


def test_a_hub_pair_gives_the_same_result_as_the_same_pair_on_disk(hub, repos):
    demo = write_demo(repos / "demo")
    base_local = open_source(SourceSpec("local", str(demo["base"].resolve())))
    tuned_local = open_source(SourceSpec("local", str(demo["rl_a"].resolve())))
    base_hub, tuned_hub = HubSource(hub_spec("demo/base")), HubSource(hub_spec("demo/rl_a"))
    hub.clear_log()

    options = AnalysisOptions(tolerance=1e-5, rank="all", device="cpu")
    local = analyze(base_local, tuned_local, options)
    remote = analyze(base_hub, tuned_hub, options)

    assert remote["base"] == base_hub.describe() and remote["tuned"] == tuned_hub.describe()
    for result in (local, remote):
        del result["base"], result["tuned"], result["summary"]["seconds"]
    assert remote == local
    assert hub.bytes_served(".safetensors") == base_hub.total_bytes + tuned_hub.total_bytes
    check_compatible(base_hub, tuned_hub)


def test_hubserver_runs_as_a_subprocess(repos):
    write_repo(repos / "org" / "model", sample_state())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hubserver", str(repos), "--gated", f"org/model={TOKEN}"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        info = httpx.get(f"{url}/api/models/org/model", params={"blobs": "true"}).json()
        assert info["id"] == "org/model" and len(info["sha"]) == 40 and info["gated"] == "manual"
        sizes = {s["rfilename"]: s["size"] for s in info["siblings"]}
        assert sizes["model.safetensors"] == (repos / "org" / "model" / "model.safetensors").stat().st_size
        denied = httpx.get(f"{url}/org/model/resolve/main/config.json")
        assert denied.status_code == 401 and denied.headers["X-Error-Code"] == "GatedRepo"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
