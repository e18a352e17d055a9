"""Fan-out at the engine level: any split into tensor groups, run part by part (in any order,
one part resumed after a crash) and finished once, gives exactly the one-pass result and masks."""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_kernel_reference import realistic_pair, write

from worker.engine import AnalysisOptions, analyze, open_source, parse_source
from worker.engine import analysis as analysis_module
from worker.engine.analysis import analyze_part, finish, pair_bytes, plan_analysis
from worker.engine.masks import MASKS_FILE
from worker.engine.tensor_groups import group_bytes, group_count, tensor_groups

TIMING = ("seconds", "bytes_read", "device")


@pytest.fixture
def pair_dirs(tmp_path, monkeypatch):
    """A sharded bf16 pair with layers, a vocabulary resize, an unsupported tensor and odd sizes."""
    monkeypatch.setattr(analysis_module, "PIECE_ELEMENTS", 700)  # several pieces per tensor
    base, tuned = {}, {}
    shapes = {"model.embed_tokens.weight": (40, 24)}
    for i in range(6):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = (24, 24)
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (60 + i, 24)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (24,)
    shapes["model.norm.weight"] = (24,)
    for n, (name, shape) in enumerate(shapes.items()):
        base[name], tuned[name] = realistic_pair(shape, torch.bfloat16, seed=n)
    b, t = realistic_pair((44, 24), torch.bfloat16, seed=99)
    base["lm_head.weight"], tuned["lm_head.weight"] = b[:40], t  # resized: 4 rows added
    base["model.rotary.inv_freq"] = tuned["model.rotary.inv_freq"] = torch.arange(4, dtype=torch.int64)
    return write(tmp_path / "base", base, shards=3), write(tmp_path / "tuned", tuned, shards=2)


def _open(dirs):
    return (open_source(parse_source(str(dirs[0]), allow_any_path=True)),
            open_source(parse_source(str(dirs[1]), allow_any_path=True)))


def _strip(result):
    result = json.loads(json.dumps(result))
    for k in TIMING:
        result["summary"].pop(k)
    return result


def test_group_count_and_groups_cover_every_tensor_once_in_file_order(pair_dirs):
    b, t = _open(pair_dirs)
    with b, t:
        plan = plan_analysis(b, t, AnalysisOptions(device="cpu"))
    names = [p.name for p in plan.pairing.pairs]
    total = sum(pair_bytes(p) for p in plan.pairing.pairs)
    for n in (1, 2, 3, 5, 8, len(names), len(names) + 10):
        groups = tensor_groups(plan, n)
        assert [name for g in groups for name in g] == names  # contiguous runs of the read order
        assert 1 <= len(groups) <= min(n, len(names))
        sizes = group_bytes(plan, groups)
        assert sum(sizes) == total
        biggest = max(pair_bytes(p) for p in plan.pairing.pairs)
        assert max(sizes) - min(sizes) <= 2 * biggest  # about equal: within a tensor or two
    assert group_count(total, total // 4, len(names)) in (4, 5)
    assert group_count(total, total * 2, len(names)) == 1
    assert group_count(total, 1, len(names)) == len(names)


@pytest.mark.parametrize("groups", [2, 3, 7])
def test_parts_finished_together_equal_one_pass_result_and_mask_bytes(tmp_path, pair_dirs, groups):
    options = AnalysisOptions(tolerance=1e-5, rank="all", device="cpu")
    b, t = _open(pair_dirs)
    with b, t:
        single = analyze(b, t, options, masks_dir=tmp_path / "single")

    fan = tmp_path / "fan"
    records: dict[str, dict] = {}
    read = 0
    b, t = _open(pair_dirs)
    with b, t:
        plan = plan_analysis(b, t, options)
        parts = tensor_groups(plan, groups)
        order = list(range(len(parts)))
        random.Random(groups).shuffle(order)  # parts finish in any order, on any worker
        for k in order:
            seen = []
            part = analyze_part(b, t, options, only=parts[k], plan=plan, masks_dir=fan, on_tensor=seen.append)
            assert sorted(part.records) == sorted(parts[k]) and len(seen) == len(parts[k])
            records.update(part.records)
            read += part.bytes_read
    # The reducer reopens the sources: a fresh plan, no state shared with the parts' runs.
    b, t = _open(pair_dirs)
    with b, t:
        merged = finish(b, t, options, records, masks_dir=fan, bytes_read=read, seconds=1.0)
    assert _strip(merged) == _strip(single)
    assert merged["summary"]["bytes_read"] == single["summary"]["bytes_read"]
    assert (fan / MASKS_FILE).read_bytes() == (tmp_path / "single" / MASKS_FILE).read_bytes()
    assert not (fan / "parts").exists()


def test_a_part_resumed_from_its_finished_tensors_recomputes_only_the_rest(tmp_path, pair_dirs):
    options = AnalysisOptions(device="cpu")
    b, t = _open(pair_dirs)
    with b, t:
        single = analyze(b, t, options, masks_dir=tmp_path / "single")
        plan = plan_analysis(b, t, options)
        parts = tensor_groups(plan, 2)
        fan = tmp_path / "fan"
        first = analyze_part(b, t, options, only=parts[0], plan=plan, masks_dir=fan)
        # The second part's worker dies after three tensors: their records and mask parts survive.
        finished = []

        class Killed(Exception):
            pass

        def die_after_three(record):
            finished.append(record)
            if len(finished) == 3:
                raise Killed

        with pytest.raises(Killed):
            analyze_part(b, t, options, only=parts[1], plan=plan, masks_dir=fan, on_tensor=die_after_three)
        redone = []
        second = analyze_part(b, t, options, only=parts[1], plan=plan, masks_dir=fan,
                              resume={r["name"]: r for r in finished}, on_tensor=redone.append)
        assert [r["name"] for r in redone] == [n for n in parts[1] if n not in {r["name"] for r in finished}]
        merged = finish(b, t, options, {**first.records, **second.records}, plan=plan, masks_dir=fan)
    assert _strip(merged) == _strip(single)
    assert (fan / MASKS_FILE).read_bytes() == (tmp_path / "single" / MASKS_FILE).read_bytes()


def test_a_part_naming_an_unknown_tensor_is_refused(pair_dirs):
    from worker.engine import EngineError

    b, t = _open(pair_dirs)
    with b, t, pytest.raises(EngineError) as err:
        analyze_part(b, t, AnalysisOptions(device="cpu"), only=["model.layers.0.mlp.up_proj.weight", "nope"])
    assert err.value.code == "internal"


def test_finish_refuses_records_that_miss_a_tensor(tmp_path, pair_dirs):
    from worker.engine import EngineError

    options = AnalysisOptions(device="cpu")
    b, t = _open(pair_dirs)
    with b, t:
        plan = plan_analysis(b, t, options)
        parts = tensor_groups(plan, 2)
        part = analyze_part(b, t, options, only=parts[0], plan=plan)
        with pytest.raises(EngineError):
            finish(b, t, options, part.records, plan=plan)
