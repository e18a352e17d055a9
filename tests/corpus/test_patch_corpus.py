"""Patches on every corpus pair (docs/ARCHITECTURES.md): rebuilt files equal the tuned ones byte for byte."""

from __future__ import annotations

import pytest

from worker.engine import open_source, parse_source
from worker.engine.patch.apply import apply_patch
from worker.engine.patch.export import export_patch

from .build import ENTRY_ORDER


def _src(path):
    return open_source(parse_source(str(path), allow_any_path=True))


@pytest.mark.parametrize("name", ENTRY_ORDER)
def test_round_trip(corpus, tmp_path, name):
    entry = corpus[name]
    with _src(entry.base_dir) as base, _src(entry.tuned_dir) as tuned:
        files = list(tuned.files)
        summary = export_patch(base, tuned, tmp_path / "p.patch")
    with _src(entry.base_dir) as base:
        apply_patch(base, tmp_path / "p.patch", tmp_path / "out")
    for f in files:
        assert (tmp_path / "out" / f).read_bytes() == (entry.tuned_dir / f).read_bytes(), f
    for path in entry.tuned_dir.iterdir():
        if path.is_file() and not path.name.endswith(".bin"):
            assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name
    # Only tensors the base has no counterpart for (a one-sided prefix dropped) are carried whole.
    from worker.engine.patch.format import PatchReader

    reader = PatchReader(tmp_path / "p.patch")
    whole = [r["name"] for r in reader.manifest["tensors"] if r["base"] is None]
    reader.close()
    assert summary["tensors"] == len(reader.manifest["tensors"])
    with _src(entry.base_dir) as base:
        short = {n.removeprefix(entry.prefix or "") for n in base.tensors}
        assert not [n for n in whole if n.removeprefix(entry.prefix or "") in short], whole
