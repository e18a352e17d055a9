"""Bad local inputs: each gets a clear message and the service keeps serving others.

Broken checkpoints are written under the service's local root and submitted as
`local:...` ids, next to a good analysis submitted right behind them.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from api import outcome, submit
from checkpoint_files import (
    broken_files,
    llama_config,
    nudge,
    small_state,
    tiny_good_state,
    write_broken,
    write_checkpoint,
)
from support.polling import wait_status

pytestmark = pytest.mark.timeout(120)


def refused(result, code: str, *words: str) -> None:
    """Refused (HTTP 4xx or a failed analysis) with `code` and a message naming the problem."""
    assert result.status in ("rejected", "failed"), f"expected a refusal, got {result}"
    if result.code is not None or result.status == "failed":
        assert result.code == code, f"expected code {code!r}, got {result}"
    text = result.message.lower()
    assert len(text) >= 15, f"message too terse to help anyone: {result}"
    assert any(w.lower() in text for w in words), f"message names none of {words}: {result}"
    assert "traceback" not in text and "exception" not in text, f"internal error leaked: {result}"


@pytest.fixture(scope="module")
def good_tiny(svc):
    """A valid checkpoint matching the broken ones' names, shapes and dtypes."""
    write_checkpoint(svc.local_root / "bad" / "good", tiny_good_state(), config=llama_config(hidden_size=4))
    return "local:bad/good"


# Each case: the broken file, the code the contract assigns, words a clear message uses.
MALFORMED = {
    "truncated": ("truncat", "incomplete", "short", "size", "end of file", "bytes"),
    "header_too_large": ("header",),
    "header_length_past_eof": ("header", "length"),
    "header_not_json": ("header", "json"),
    "overlapping_offsets": ("overlap", "offset"),
    "offsets_out_of_range": ("offset", "range", "beyond", "past", "outside"),
    "offsets_wrong_size": ("offset", "size", "shape"),
    "trailing_bytes": ("trailing", "extra", "unused", "bytes", "size"),
    "unknown_dtype": ("dtype", "q4_k"),
}
assert set(MALFORMED) == set(broken_files())


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_is_refused(svc, good_tiny, keeps_serving, case):
    write_broken(svc.local_root / "bad" / case, case)
    with keeps_serving():
        result = outcome(svc.client, good_tiny, f"local:bad/{case}")
    refused(result, "malformed", *MALFORMED[case])


@pytest.mark.parametrize(
    "local_id",
    [
        "local:../outside",
        "local:../../../../etc",
        "local:demo/../../outside",
        "/etc",
        "~/outside",
        "local:/etc",
        "local:escape",  # a symlink inside the root pointing outside it
    ],
)
def test_local_path_outside_root_is_refused(svc, tmp_path_factory, keeps_serving, local_id):
    # A valid checkpoint really exists outside the root, so only the rule can stop it.
    outside = svc.local_root.parent / "outside"
    if not (outside / "model.safetensors").exists():
        write_checkpoint(outside, small_state(3))
    escape = svc.local_root / "escape"
    if not escape.is_symlink():
        escape.symlink_to(outside, target_is_directory=True)
    with keeps_serving():
        result = outcome(svc.client, svc.demo("base"), local_id)
    refused(result, "path_forbidden", "root", "outside", "not allowed", "forbidden", "refused")


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(svc, keeps_serving):
    """A checkpoint with only pytorch_model.bin: refused, and the pickle never runs."""
    marker = svc.local_root.parent / "pickle-was-loaded"
    marker.unlink(missing_ok=True)

    class Boom:  # unpickling this creates `marker`: proof that someone loaded it
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = svc.local_root / "bad" / "pickle_only"
    d.mkdir(parents=True, exist_ok=True)
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    (d / "config.json").write_text('{"model_type": "llama"}')
    with keeps_serving():
        result = outcome(svc.client, svc.demo("base"), "local:bad/pickle_only")
    refused(result, "no_safetensors", "safetensors")
    assert not marker.exists(), "the pickle file was unpickled"


def test_missing_local_checkpoint_is_refused(svc, keeps_serving):
    with keeps_serving():
        result = outcome(svc.client, svc.demo("base"), "local:bad/does-not-exist")
    refused(result, "not_found", "not found", "no such", "does not exist", "does-not-exist")


def test_architecture_mismatch_is_refused(svc, keeps_serving):
    base = write_checkpoint(svc.local_root / "bad" / "arch_a", small_state(1))
    gpt2 = {f"transformer.h.{i}.attn.c_attn.weight": torch.randn(64, 192).to(torch.bfloat16) for i in range(3)}
    write_checkpoint(
        svc.local_root / "bad" / "arch_b", gpt2, config={"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    )
    assert base.exists()
    with keeps_serving():
        result = outcome(svc.client, "local:bad/arch_a", "local:bad/arch_b")
    refused(result, "arch_mismatch", "architecture", "gpt2", "llama", "match")


# --- inputs that are odd but legitimate: reported, never a crash -----------------------


def test_vocab_resize_compares_common_rows_and_reports_added(svc):
    base = small_state(2)
    base["model.embed_tokens.weight"] = torch.randn(100, 16).to(torch.bfloat16)
    tuned = nudge(base)
    tuned["model.embed_tokens.weight"] = torch.cat(
        [tuned["model.embed_tokens.weight"], torch.randn(4, 16).to(torch.bfloat16)]
    )
    write_checkpoint(svc.local_root / "odd" / "vocab_base", base)
    write_checkpoint(svc.local_root / "odd" / "vocab_tuned", tuned)
    result = outcome(svc.client, "local:odd/vocab_base", "local:odd/vocab_tuned")
    assert result.status == "done", result
    res = result.body["result"]
    resized = {r["name"]: r for r in res["unmatched"]["resized"]}
    assert resized["model.embed_tokens.weight"]["added"] == 4 * 16
    assert res["summary"]["added"] == 4 * 16
    assert res["summary"]["numel"] == sum(t.numel() for t in base.values())
    assert res["warnings"], "a resize should be called out in warnings"


def test_dtype_mismatch_is_compared_and_flagged(svc):
    base = small_state(4, dtype=torch.float32)
    tuned = {k: v.to(torch.bfloat16) for k, v in nudge(base).items()}
    write_checkpoint(svc.local_root / "odd" / "dtype_base", base)
    write_checkpoint(svc.local_root / "odd" / "dtype_tuned", tuned)
    result = outcome(svc.client, "local:odd/dtype_base", "local:odd/dtype_tuned")
    assert result.status == "done", result
    res = result.body["result"]
    assert res["summary"]["dtype_mismatch"] is True
    assert {d["name"] for d in res["unmatched"]["dtype_mismatch"]} == set(base)
    assert all(t["compare_dtype"] == "bfloat16" for t in res["tensors"])
    assert res["warnings"]


def test_nan_tensors_count_as_changed_and_are_reported(svc):
    base = small_state(5)
    tuned = dict(base)
    name = "model.layers.0.self_attn.q_proj.weight"
    poisoned = base[name].clone()
    poisoned[0, :10] = float("nan")
    tuned[name] = poisoned
    write_checkpoint(svc.local_root / "odd" / "nan_base", base)
    write_checkpoint(svc.local_root / "odd" / "nan_tuned", tuned)
    result = outcome(svc.client, "local:odd/nan_base", "local:odd/nan_tuned")
    assert result.status == "done", result
    summary = result.body["result"]["summary"]
    assert summary["nan"] == 10
    assert all(summary["changed"][t] == 10 for t in summary["changed"]), summary["changed"]


def test_empty_tensors_do_not_break_the_analysis(svc):
    base = small_state(6)
    base["model.empty_buffer"] = torch.zeros(0, dtype=torch.bfloat16)
    tuned = nudge(base)
    write_checkpoint(svc.local_root / "odd" / "empty_base", base)
    write_checkpoint(svc.local_root / "odd" / "empty_tuned", tuned)
    result = outcome(svc.client, "local:odd/empty_base", "local:odd/empty_tuned")
    assert result.status == "done", result
    summary = result.body["result"]["summary"]
    assert summary["numel"] == sum(t.numel() for t in base.values())


def test_refused_requests_leave_no_analysis_behind(svc):
    """A refusal at the door must not create a record that lingers as queued forever."""
    before = svc.client.get("/api/analyses", params={"limit": 1000}).json()
    r = submit(svc.client, "not a repo id!!", svc.demo("base"))
    assert r.status_code == 422, r.text
    after = svc.client.get("/api/analyses", params={"limit": 1000}).json()
    assert len(_items(after)) == len(_items(before))


def _items(listing) -> list:
    return listing["items"] if isinstance(listing, dict) else listing


def test_good_analysis_after_all_the_bad_ones(svc):
    """Nothing above left the worker wedged: a fresh analysis still completes."""
    r = submit(svc.client, svc.demo("base"), svc.demo("rl_b"), tolerance=3e-5)
    assert r.status_code in (200, 201, 202), r.text
    assert wait_status(svc.client, r.json()["id"])["status"] == "done"
