"""The result of a pass: per-tensor records in, the schema-1 JSON out (docs/CONTRACTS.md).

Pure bookkeeping over records (sums, element-weighted means, layer x module groups);
reads no weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from worker.engine import precision
from worker.engine.checkpoints.sources import Source
from worker.engine.kernel import geometry as geo
from worker.engine.kernel.bins import CURVE_TOLERANCES, EXACT_TOLERANCES, ULP_BUCKETS, ulp_labels
from worker.engine.kernel.spectra import rank_summary
from worker.engine.pairing.location import layer_order, locate
from worker.engine.pairing.pairs import Pair
from worker.engine.reference import reference_for
from worker.engine.tolerance import tolerance_key

ENGINE_VERSION = "0.3.0"
SCHEMA = 1


def tensor_record(pair: Pair, stats: dict) -> dict:
    return {
        "name": pair.name,
        "shape": list(pair.shape),
        "dtype": str(pair.base.torch_dtype).removeprefix("torch."),
        "tuned_dtype": str(pair.tuned.torch_dtype).removeprefix("torch."),
        "compare_dtype": str(pair.compare_dtype).removeprefix("torch."),
        "stack": (where := locate(pair.name)).stack,
        "layer": where.layer,
        "module": where.module,
        "expert": where.expert,
        "added": pair.added,
        "removed": pair.removed,
        **{k: v for k, v in stats.items() if k != "name"},
    }


def _sparsity(numel: int, changed: Mapping[str, int]) -> dict[str, float]:
    return {k: (1.0 - c / numel) if numel else 1.0 for k, c in changed.items()}


def _group(records: list[dict], *keys: str) -> list[dict]:
    """Element-weighted sums over records sharing `keys` (layers: ("stack", "layer"))."""
    groups: dict = {}
    members: dict = {}
    for r in records:
        k = tuple(r.get(key) for key in keys)
        members.setdefault(k, []).append(r)
        g = groups.setdefault(k, {**dict(zip(keys, k)), "numel": 0, "tensors": 0, "changed": {}, "curve_changed": None})
        g["numel"] += r["numel"]
        g["tensors"] += 1
        for t, c in r["changed"].items():
            g["changed"][t] = g["changed"].get(t, 0) + c
        curve = r["curve_changed"]
        g["curve_changed"] = curve[:] if g["curve_changed"] is None else [a + b for a, b in zip(g["curve_changed"], curve)]
    for k, g in groups.items():
        g["sparsity"] = _sparsity(g["numel"], g["changed"])
        g["geometry"] = geo.weighted(members[k])
        g["rank"] = rank_summary(members[k])
        g["precision"] = precision.merge(members[k])
    out = list(groups.values())
    if "layer" in keys:
        out.sort(key=layer_order)
    return out


def build_result(base: Source, tuned: Source, options, records: list[dict],
                 unmatched: dict, warnings: list[str]) -> dict:
    """The schema-1 result from per-tensor records."""
    numel = sum(r["numel"] for r in records)
    keys = list(records[0]["changed"]) if records else [tolerance_key(t) for t in EXACT_TOLERANCES]
    changed = {k: sum(r["changed"][k] for r in records) for k in keys}
    curve = [sum(col) for col in zip(*(r["curve_changed"] for r in records))] if records else [0] * len(CURVE_TOLERANCES)
    ulp = [sum(col) for col in zip(*(r["ulp"] for r in records))] if records else [0] * ULP_BUCKETS
    delta_sq = sum(r["delta_fro"] ** 2 for r in records)
    base_sq = sum(r["base_fro"] ** 2 for r in records)
    ranked = [r for r in records if r["rank_ratio"] is not None]
    nan = sum(r["nan"] for r in records)
    changed_exact = changed[tolerance_key(0.0)] - nan
    summary = {
        "numel": numel,
        "changed": changed,
        "sparsity": _sparsity(numel, changed),
        "curve_changed": curve,
        "nan": nan,
        "added": sum(r["added"] for r in records),
        "removed": sum(r.get("removed", 0) for r in records),
        "tensors": len(records),
        "delta_fro": math.sqrt(delta_sq),
        "base_fro": math.sqrt(base_sq),
        "ratio": math.sqrt(delta_sq / base_sq) if base_sq else None,
        "max_abs_delta": max((r["max_abs_delta"] for r in records), default=0.0),
        "ulp": {"buckets": ulp_labels(), "counts": ulp, "one_step_share": ulp[0] / changed_exact if changed_exact else None},
        "rank": {
            "mode": options.rank,
            "matrices": len(ranked),
            "mean": sum(r["rank_ratio"] for r in ranked) / len(ranked) if ranked else None,
            "weighted_mean": (sum(r["rank_ratio"] * r["numel"] for r in ranked) / sum(r["numel"] for r in ranked))
            if ranked and sum(r["numel"] for r in ranked) else None,
            **rank_summary(records),  # "study" (float32 matrix_rank, as above) and "f64" (numerical rank)
        },
        "geometry": {"mode": options.geometry, "matrices": 0, **(geo.weighted(records) or {})},
        "dtype_mismatch": bool(unmatched.get("dtype_mismatch")),
        "precision": precision.merge(records, with_ratio=True),
    }
    return {
        "schema": SCHEMA,
        "engine_version": ENGINE_VERSION,
        "base": base.describe(),
        "tuned": tuned.describe(),
        "options": {"tolerance": options.tolerance, "rank": options.rank, "geometry": options.geometry},
        "tolerances": list(EXACT_TOLERANCES),
        "curve_tolerances": CURVE_TOLERANCES,
        "summary": summary,
        "tensors": records,
        "layers": _group(records, "stack", "layer"),
        "modules": _group(records, "module"),
        "unmatched": unmatched,
        "warnings": warnings,
        "reference": reference_for(base.spec.id, tuned.spec.id) if base.spec.kind == tuned.spec.kind == "hub" else None,
    }
