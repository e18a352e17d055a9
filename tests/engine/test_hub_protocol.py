"""The Hub as it behaves today: presigned storage urls that expire, and a rate-limited /resolve.

The loopback Hub (tests/hubserver.py) redirects /resolve of a large file to a presigned
CDN url that answers 403 (S3's AccessDenied, "Request has expired") after `url_lifetime`,
and can answer /resolve with 429 + Retry-After. Every request is logged with its arrival
and completion times, so waits are checked on the server's clock, never by timing the test.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hubserver import HubServer, Served  # tests/ is on sys.path (tests/conftest.py's directory)
from safetensors.torch import save_file

from worker.engine import AnalysisOptions, EngineError, Piece, SourceSpec, analyze, parse_source
from worker.engine.checkpoints.hub import HubSource
from worker.engine.checkpoints.local import LocalSource

pytestmark = pytest.mark.timeout(120)

TOKEN = "hf_loopbackSecretToken123"
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
TENSORS = 24  # per checkpoint, in two shards: with request_bytes = 1, one range read per tensor


@pytest.fixture(autouse=True)
def _hf_env(hf_env, monkeypatch):
    # Many small range reads: no coalescing, a small read-ahead.
    monkeypatch.setattr(HubSource, "request_bytes", 1)
    monkeypatch.setattr(HubSource, "prefetch_bytes", 4 << 10)


@pytest.fixture
def repos(tmp_path) -> Path:
    root = tmp_path / "repos"
    state = model_state(0)
    write_sharded(root / "org" / "base", state)
    write_sharded(root / "org" / "tuned", tuned_from(state))
    write_sharded(root / "org" / "gated", state)
    return root


def model_state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    modules = ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj")
    return {f"model.layers.{i // len(modules)}.{modules[i % len(modules)]}.weight":
            torch.randn(16, 16, generator=gen).to(torch.bfloat16) for i in range(TENSORS)}


def tuned_from(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    out = {}
    for name, t in state.items():
        mask = torch.rand(t.shape, generator=gen) < 0.3
        out[name] = torch.where(mask, (t.float() * 1.01 + 1e-3).to(t.dtype), t)
    return out


def write_sharded(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True)
    names, weight_map = sorted(state), {}
    for k in range(2):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: state[n] for n in names[k::2]}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names[k::2]})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(CONFIG))
    return directory


def hub_spec(repo: str) -> SourceSpec:
    return SourceSpec("hub", repo, None, display=repo)


def normalised(result: dict) -> dict:
    result = dict(result)
    for key in ("base", "tuned"):
        result.pop(key)
    result["summary"] = {k: v for k, v in result["summary"].items() if k != "seconds"}
    return result


def local_result(repos: Path) -> dict:
    with LocalSource(parse_source(str(repos / "org" / "base"), allow_any_path=True)) as b, \
            LocalSource(parse_source(str(repos / "org" / "tuned"), allow_any_path=True)) as t:
        result = analyze(b, t, AnalysisOptions(device="cpu"))
        assert b.bytes_read == b.total_bytes and t.bytes_read == t.total_bytes
    return normalised(result)


def weight_files(repos: Path, repo: str) -> list[str]:
    return sorted(p.name for p in (repos / repo).glob("*.safetensors"))


def oid(repos: Path, repo: str, file: str) -> str:
    return hashlib.sha256((repos / repo / file).read_bytes()).hexdigest()


def cdn_reads(hub: HubServer, repos: Path, repo: str, file: str) -> list[Served]:
    return [r for r in hub.requests if r.path == f"/blobs/{oid(repos, repo, file)}"]


def assert_waited(hub: HubServer, status: int) -> int:
    """After every `status` answer carrying Retry-After, the next request for the same path came no
    sooner than Retry-After later (server clock). Returns how many such answers there were."""
    log = sorted(hub.requests, key=lambda r: r.started)
    limited = [r for r in log if r.status == status and "Retry-After" in r.headers]
    for refused in limited:
        later = [r for r in log if r.path == refused.path and r.started > refused.finished]
        assert later, f"{refused.path} was never asked again after {status}"
        waited = later[0].started - refused.finished
        assert waited >= float(refused.headers["Retry-After"]) - 0.01, (refused.path, waited)
    return len(limited)


# --- one /resolve per file ---------------------------------------------------------------------


def test_an_analysis_resolves_each_file_once_however_many_range_reads(repos):
    expected = local_result(repos)
    hub = HubServer(repos)
    with hub, hub.endpoint():
        base, tuned = HubSource(hub_spec("org/base")), HubSource(hub_spec("org/tuned"))
        hub.clear_log()
        result = analyze(base, tuned, AnalysisOptions(device="cpu"))
        assert normalised(result) == expected

        for repo in ("org/base", "org/tuned"):
            for file in weight_files(repos, repo):
                reads = [r for r in cdn_reads(hub, repos, repo, file) if r.status == 206]
                assert len(reads) >= TENSORS // 2 - 1, f"{file}: too few range reads ({len(reads)}) to prove anything"
        # Opening resolved each file once (for its header); the whole analysis reused those urls.
        assert not hub.resolve_counts()
        for source in (base, tuned):
            assert source.resolve_calls == {f: 1 for f in weight_files(repos, "org/base")} | {
                "model.safetensors.index.json": 1, "config.json": 1}
        # bytes_read: the weight bytes actually fetched, headers excluded.
        assert base.bytes_read + tuned.bytes_read == hub.bytes_served(".safetensors")
        assert base.bytes_read == base.total_bytes and result["summary"]["bytes_read"] == base.total_bytes + tuned.total_bytes


# --- expiry -----------------------------------------------------------------------------------


def test_an_analysis_survives_urls_expiring_mid_run(repos):
    expected = local_result(repos)
    lifetime = 0.15
    hub = HubServer(repos, url_lifetime=lifetime, cdn_delay=0.02)  # the run lasts several lifetimes
    with hub, hub.endpoint():
        base, tuned = HubSource(hub_spec("org/base")), HubSource(hub_spec("org/tuned"))
        hub.clear_log()
        result = analyze(base, tuned, AnalysisOptions(device="cpu"))
        assert normalised(result) == expected

        reads = [r for r in hub.requests if r.path.startswith("/blobs/")]
        assert max(r.finished for r in reads) - min(r.started for r in reads) > 2 * lifetime  # the premise
        expired = [r for r in reads if r.status == 403]
        assert expired and base.refreshes + tuned.refreshes >= 1
        counts = hub.resolve_counts()
        for repo in ("org/base", "org/tuned"):
            for file in weight_files(repos, repo):
                # One /resolve per url that expired, however many readers held it; none otherwise.
                dead = {r.query for r in cdn_reads(hub, repos, repo, file) if r.status == 403}
                assert counts[(repo, file)] <= len(dead), (repo, file, counts[(repo, file)], len(dead))
        assert sum(counts.values()) == base.refreshes + tuned.refreshes
        assert all(r.authorization is None for r in reads)


def test_readers_that_hold_one_expired_url_share_one_refresh(repos):
    hub = HubServer(repos, gated={"org/gated": {TOKEN}})
    with hub, hub.endpoint():
        source = HubSource(hub_spec("org/gated"), token=TOKEN)
        hub.expire_cdn_urls()
        hub.clear_log()
        pieces = [Piece(n, 0, info.numel) for n, info in sorted(source.tensors.items(), key=lambda x: x[1].offset)]
        for piece, tensor in source.iter_pieces(pieces):
            assert torch.equal(tensor.view(torch.int16), model_state(0)[piece.name].flatten().view(torch.int16))

        counts = hub.resolve_counts()
        assert counts == Counter({("org/gated", f): 1 for f in weight_files(repos, "org/gated")})
        assert source.refreshes == 2
        assert len([r for r in hub.requests if r.status == 403]) >= 2  # every file's old url was refused
        # The token went with the /resolve calls only, never to the storage host.
        assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests if "/resolve/" in r.path)
        assert all(r.authorization is None for r in hub.requests if r.path.startswith("/blobs/"))


def test_a_url_refused_as_soon_as_it_is_handed_out_is_transient(repos):
    hub = HubServer(repos, url_lifetime=-1.0)  # every url is already expired
    with hub, hub.endpoint():
        with pytest.raises(EngineError) as info:
            HubSource(hub_spec("org/base"))
        assert info.value.code == "transient" and "fresh link" in info.value.message
        assert max(hub.resolve_counts().values()) == 1  # no loop of refreshes


# --- rate limits ------------------------------------------------------------------------------


def test_a_burst_of_429_on_resolve_is_waited_out(repos):
    hub = HubServer(repos)
    with hub, hub.endpoint():
        hub.throttle_resolves(2, retry_after=1, match=r"model-00001-of-00002\.safetensors")
        source = HubSource(hub_spec("org/base"))
        assert assert_waited(hub, 429) == 2
        name = sorted(source.tensors)[0]
        assert torch.equal(source.read(name).view(torch.int16), model_state(0)[name].view(torch.int16))
        assert source.resolve_calls["model-00001-of-00002.safetensors"] == 3  # two refused, one answered


def test_an_analysis_survives_429s_while_refreshing_expired_urls(repos):
    expected = local_result(repos)
    hub = HubServer(repos)
    with hub, hub.endpoint():
        base, tuned = HubSource(hub_spec("org/base")), HubSource(hub_spec("org/tuned"))
        hub.expire_cdn_urls()
        hub.clear_log()
        hub.throttle_resolves(3, retry_after=1)
        result = analyze(base, tuned, AnalysisOptions(device="cpu"))
        assert normalised(result) == expected  # exact
        assert assert_waited(hub, 429) == 3
        counts = hub.resolve_counts()
        assert sum(counts.values()) == 4 + 3  # one refresh per file, plus the three refused calls


def test_a_long_retry_after_is_capped(repos, monkeypatch):
    monkeypatch.setattr(HubSource, "max_retry_after_s", 0.2)
    hub = HubServer(repos)
    with hub, hub.endpoint():
        hub.throttle_resolves(1, retry_after=3600, match="safetensors")
        HubSource(hub_spec("org/base"))
        (refused,) = [r for r in hub.requests if r.status == 429]
        retry = next(r for r in hub.requests if r.path == refused.path and r.started > refused.finished)
        assert 0.19 <= retry.started - refused.finished < 30


def test_503_with_retry_after_from_storage_is_honoured(repos):
    hub = HubServer(repos)
    with hub, hub.endpoint():
        source = HubSource(hub_spec("org/base"))
        hub.clear_log()
        hub.fail_next(1, status=503, match="/blobs/", retry_after=1)
        name = sorted(source.tensors)[0]
        assert torch.equal(source.read(name).view(torch.int16), model_state(0)[name].view(torch.int16))
        assert assert_waited(hub, 503) == 1
        assert not hub.resolve_counts()  # a 503 is not an expiry: the url is kept


def test_rate_limits_that_never_end_are_transient(repos):
    hub = HubServer(repos)
    with hub, hub.endpoint():
        hub.throttle_resolves(HubSource.retries + 1, retry_after=0, match=r"model-00002-of-00002\.safetensors")
        with pytest.raises(EngineError) as info:
            HubSource(hub_spec("org/base"))
        assert info.value.code == "transient" and "429" in info.value.message


# --- servers that are not huggingface.co (self-hosted mirrors; olah itself: tests/reliability/test_olah.py) ---


def test_a_server_that_ignores_ranges_is_read_through_whole_files_with_one_warning(repos, monkeypatch, caplog):
    from worker.engine.checkpoints import hub_http

    monkeypatch.setattr(hub_http, "_WARNED_RANGES", set())
    expected = local_result(repos)
    hub = HubServer(repos, ranges=False)
    with hub, hub.endpoint(), caplog.at_level("WARNING", logger="worker.engine.checkpoints.hub"):
        base, tuned = HubSource(hub_spec("org/base")), HubSource(hub_spec("org/tuned"))
        with base, tuned:
            assert normalised(analyze(base, tuned, AnalysisOptions(device="cpu"))) == expected
            assert base.ranges_ignored and tuned.ranges_ignored
    ranged = [r for r in hub.requests if r.range is not None and r.path.startswith("/blobs/")]
    assert ranged and {r.status for r in ranged} == {200}  # every range was answered with the whole file
    warnings = [r for r in caplog.records if "ignores HTTP range requests" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per server, not per read or source
    assert hub.url in warnings[0].getMessage()


def test_a_server_that_gives_no_size_anywhere_is_refused_naming_what_it_lacks(repos):
    hub = HubServer(repos, ranges=False, sizes=False)
    with hub, hub.endpoint():
        with pytest.raises(EngineError) as err:
            HubSource(hub_spec("org/base"))
    assert err.value.code == "bad_request"
    assert "gives no size" in err.value.message and "Content-Length" in err.value.message
    assert hub.url in err.value.message and "network" not in err.value.message


def test_a_server_that_answers_errors_every_time_is_named_not_the_network(repos):
    hub = HubServer(repos)
    with hub, hub.endpoint():
        hub.fail_next(HubSource.retries + 1, status=500, match=r"model-00001-of-00002\.safetensors")
        with pytest.raises(EngineError) as err:
            HubSource(hub_spec("org/base"))
    assert err.value.code == "transient"
    assert "answered HTTP 500" in err.value.message and "network" not in err.value.message


def test_a_206_of_a_wider_range_is_cut_to_the_range_asked(repos):
    expected = local_result(repos)
    hub = HubServer(repos, ranges="open")  # bytes=a-b answered with bytes a-(size-1)
    with hub, hub.endpoint():
        base, tuned = HubSource(hub_spec("org/base")), HubSource(hub_spec("org/tuned"))
        with base, tuned:
            assert normalised(analyze(base, tuned, AnalysisOptions(device="cpu"))) == expected
    wider = [r for r in hub.requests if r.status == 206 and r.range is not None]
    # the header reads (bytes=0-7) were answered with whole files, and still read as 8 bytes
    assert [r for r in wider if r.range == "bytes=0-7" and not r.headers["Content-Range"].startswith("bytes 0-7/")]


def test_a_206_of_another_range_is_never_read_as_the_range_asked(repos):
    hub = HubServer(repos, ranges="shifted")  # bytes=a-b answered with bytes (a+1)-b
    with hub, hub.endpoint():
        with pytest.raises(EngineError) as err:
            HubSource(hub_spec("org/base"))
    assert err.value.code == "transient"
    assert "the server sent 'bytes 1-7/" in err.value.message and "network" not in err.value.message
