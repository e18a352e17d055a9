"""Ids, paths and safetensors files: what is accepted, what is refused and how."""

from __future__ import annotations

import struct
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open

from worker.engine import EngineError, Piece, open_source, parse_source
from worker.engine.checkpoints.safetensors_format import MAX_HEADER_BYTES, header_length

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from checkpoint_files import broken_files, tiny_good_state, write_broken, write_checkpoint  # noqa: E402


@pytest.mark.parametrize("case", sorted(broken_files()))
def test_every_broken_file_is_refused_before_reading_weights(tmp_path, case):
    write_broken(tmp_path / case, case)
    with pytest.raises(EngineError) as err:
        open_source(parse_source(str(tmp_path / case), allow_any_path=True))
    assert err.value.code == "malformed"
    assert "model.safetensors" in err.value.message


def test_the_good_twin_of_the_broken_files_opens(tmp_path):
    write_checkpoint(tmp_path / "good", tiny_good_state())
    with open_source(parse_source(str(tmp_path / "good"), allow_any_path=True)) as src:
        assert torch.equal(src.read("model.norm.weight"), torch.full((4,), 0.5))
        assert torch.equal(src.read_piece(Piece("model.layers.0.self_attn.q_proj.weight", 3, 9)), torch.full((6,), 0.5))
        assert len(src.sha) == 64


def test_header_limit_is_the_reference_libraries_and_is_checked_before_reading(tmp_path):
    # The length prefix alone decides: exactly at the limit passes this check, one byte more does not.
    assert header_length(struct.pack("<Q", MAX_HEADER_BYTES), "f", 8 + MAX_HEADER_BYTES) == MAX_HEADER_BYTES
    with pytest.raises(EngineError, match="too large"):
        header_length(struct.pack("<Q", MAX_HEADER_BYTES + 1), "f", 8 + MAX_HEADER_BYTES + 1)
    # A whole (sparse) file claiming a header one byte over the limit: the engine refuses it
    # without reading the header, and so does the reference library.
    d = tmp_path / "huge"
    d.mkdir()
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        f.truncate(8 + MAX_HEADER_BYTES + 1 + 8)
    tracemalloc.start()
    try:
        with pytest.raises(EngineError) as err:
            open_source(parse_source(str(d), allow_any_path=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == "malformed" and "too large" in err.value.message
    assert peak < 10_000_000  # the 100 MB header was never read
    with pytest.raises(SafetensorError, match="header too large"):
        safe_open(str(d / "model.safetensors"), framework="numpy")


def test_content_id_follows_bytes_not_names(tmp_path):
    a = write_checkpoint(tmp_path / "a", tiny_good_state())
    b = write_checkpoint(tmp_path / "b", tiny_good_state())
    state = tiny_good_state()
    state["model.norm.weight"][0] = 0.25  # same header, same size, one value differs
    c = write_checkpoint(tmp_path / "c", state)
    sha = lambda p: open_source(parse_source(str(p), allow_any_path=True)).sha  # noqa: E731
    assert sha(a) == sha(b) != sha(c)


@pytest.mark.parametrize(
    "text, kind, ident, rev",
    [
        ("meta-llama/Meta-Llama-3-8B-Instruct", "hub", "meta-llama/Meta-Llama-3-8B-Instruct", None),
        ("gpt2", "hub", "gpt2", None),
        ("org/name@v1.0", "hub", "org/name", "v1.0"),
        ("org/name@refs/pr/3", "hub", "org/name", "refs/pr/3"),
    ],
)
def test_hub_ids(text, kind, ident, rev):
    spec = parse_source(text)
    assert (spec.kind, spec.id, spec.revision) == (kind, ident, rev)


@pytest.mark.parametrize("text", ["not a repo!!", "a/b/c", "org/../x", "org/na--me", "", "-org/x"])
def test_malformed_ids_are_refused(text):
    with pytest.raises(EngineError) as err:
        parse_source(text)
    assert err.value.code == "bad_id"


@pytest.mark.parametrize("rev", ["bad rev", "../main", "x..y", "a;b"])
def test_malformed_revisions_are_refused(rev):
    with pytest.raises(EngineError) as err:
        parse_source("org/name", revision=rev)
    assert err.value.code == "bad_revision"


def test_server_paths_stay_under_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "demo" / "base").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    assert parse_source("local:demo/base", local_root=root).id == str((root / "demo" / "base").resolve())
    for text in ("local:../outside", "local:escape", "local:/etc", str(tmp_path / "outside"), "~/x", "./x"):
        with pytest.raises(EngineError) as err:
            parse_source(text, local_root=root)
        assert err.value.code == "path_forbidden", text


def test_pickle_only_directory_is_refused_unread(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(EngineError) as err:
        open_source(parse_source(str(d), allow_any_path=True))
    assert err.value.code == "no_safetensors" and "pickle" in err.value.message
