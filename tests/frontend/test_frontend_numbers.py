"""Numbers the pages show, derived from real engine results."""

from __future__ import annotations

import math

import pytest

from frontend import numbers as N


def test_exact_tolerances_read_the_engine_counts(demo_results):
    r = demo_results["rl_a"]
    for t in r["tolerances"]:
        s, exact = N.result_sparsity(r, t)
        assert exact
        assert s == pytest.approx(r["summary"]["sparsity"][N.tol_key(t)], abs=1e-12)


def test_curve_grid_points_are_exact_and_between_points_is_bracketed(demo_results):
    r = demo_results["sft"]
    grid, curve = r["curve_tolerances"], r["summary"]["curve_changed"]
    i = len(grid) // 2
    c, exact = N.changed_at(r["summary"], grid[i], grid)
    assert exact and c == curve[i]
    mid = math.sqrt(grid[i] * grid[i + 1])
    c, exact = N.changed_at(r["summary"], mid, grid)
    assert not exact
    assert min(curve[i], curve[i + 1]) <= c <= max(curve[i], curve[i + 1])


def test_tensor_totals_add_up_to_the_summary_at_any_tolerance(demo_results):
    r = demo_results["resized"]
    grid = r["curve_tolerances"]
    for t in (0.0, 1e-5, 3.3e-6, 2e-4):
        groups = N.aggregate(r["tensors"], t, grid, by=("layer",))
        total = sum(g["changed"] for g in groups.values())
        expect, _ = N.changed_at(r["summary"], t, grid)
        assert total == pytest.approx(expect, rel=1e-9)
        assert sum(g["numel"] for g in groups.values()) == r["summary"]["numel"]


def test_layer_module_groups_match_the_engine_tables(demo_results):
    r = demo_results["rl_b"]
    by_layer = N.aggregate(r["tensors"], 1e-5, r["curve_tolerances"], by=("layer",))
    for row in r["layers"]:
        g = by_layer[(row["layer"],)]
        assert g["numel"] == row["numel"]
        assert g["changed"] == row["changed"]["1e-05"]


def test_tensor_rows_are_numeric_and_match_records(demo_results):
    r = demo_results["rl_a"]
    rows = N.tensor_rows(r["tensors"], 1e-5, r["curve_tolerances"])
    assert len(rows) == len(r["tensors"])
    for row, rec in zip(rows, r["tensors"]):
        assert row["changed"] == rec["changed"]["1e-05"]
        assert row["sparsity"] == pytest.approx(100 * (1 - rec["changed"]["1e-05"] / rec["numel"]), abs=1e-4)
        assert isinstance(row["numel"], int)


@pytest.mark.parametrize("text,expect", [
    ("1e-5", 1e-05), ("0.00001", 1e-05), ("0", 0.0), ("3e-6", 3e-6), ("1e-3", 1e-3),
    ("nonsense", 1e-05), ("-1", 1e-05), ("inf", 1e-05), (None, 1e-05), ("0.5", 1e-05),
])
def test_parse_tolerance(text, expect):
    assert N.parse_tolerance(text) == expect


def test_formatting():
    assert N.fmt_tol(1e-05) == "1e-5"
    assert N.fmt_tol(3.16e-06) == "3.16e-6"
    assert N.fmt_tol(0.0) == "0"
    assert N.parse_tolerance(N.fmt_tol(4.47e-6)) == pytest.approx(4.47e-6)
    assert N.fmt_pct(0.81384) == "81.38 %"
    assert N.fmt_pct(0.999951) == "99.9951 %"
    assert N.fmt_pct(float("nan")) == "–"


def test_a_lora_adapter_side_is_labelled_with_its_rank_and_alpha():
    from frontend.pages.picker import label

    tuned = {"kind": "hub", "id": "org/lora", "revision": "main", "sha": "f" * 64,
             "adapter": {"type": "LORA", "r": 8, "lora_alpha": 16, "label": "LoRA r=8, alpha=16"}}
    result = {"base": {"kind": "hub", "id": "org/base", "sha": "a" * 40}, "tuned": tuned}
    assert N.pair_label(result) == "org/base → org/lora (LoRA r=8, alpha=16)"
    # while it runs, the page header reads the request, which carries the sides' descriptions
    running = {"id": "x", "request": {"base": "org/base", "tuned": "org/lora", "sources": {"tuned": tuned}}}
    assert label(running) == "org/base → org/lora (LoRA r=8, alpha=16)"
    plain = {"id": "x", "request": {"base": "org/base", "tuned": "org/ft", "sources": {"tuned": {"id": "org/ft"}}}}
    assert label(plain) == "org/base → org/ft"
