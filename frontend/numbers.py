"""Numbers derived from a result (schema 1) for display: pure functions, no Dash.

The engine counts changed elements exactly at the seven study tolerances and on
a dense log grid (`curve_tolerances`). A view tolerance that is neither is
interpolated in log t between its two neighbouring counts; because changed(t)
never increases with t, the estimate is bracketed by exact counts, and the UI
marks it with "≈" so nobody mistakes it for an exact value.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

from worker.engine.tolerance import tolerance_key

EXACT_TOLERANCES = (0.0, 1e-08, 1e-07, 1e-06, 1e-05, 0.0001, 0.001)
DEFAULT_TOLERANCE = 1e-05


def tol_key(t: float) -> str:
    return tolerance_key(t)


def snap(t: float, exact: Sequence[float] = EXACT_TOLERANCES, rel: float = 1e-6) -> float:
    """The exact tolerance t stands for, when it is one up to float noise (slider steps)."""
    for e in exact:
        if e == t or (e > 0 and t > 0 and abs(math.log10(t) - math.log10(e)) < rel):
            return e
    return t


def parse_tolerance(text: str | None, default: float = DEFAULT_TOLERANCE) -> float:
    """A tolerance from a URL query value; anything unreadable or out of range gives the default."""
    try:
        t = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    if not math.isfinite(t) or t < 0 or t > 1e-2:
        return default
    return snap(t)


def changed_at(record: Mapping, t: float, curve_tolerances: Sequence[float] | None) -> tuple[float, bool]:
    """(changed elements at tolerance t, whether that count is exact) for a tensor,
    layer, module or summary record (anything with "changed" and maybe "curve_changed")."""
    exact = record.get("changed") or {}
    key = tol_key(t)
    if key in exact:
        return float(exact[key]), True
    points: dict[float, float] = {}
    curve = record.get("curve_changed")
    if curve and curve_tolerances:
        for ct, c in zip(curve_tolerances, curve):
            points[float(ct)] = float(c)
    for k, c in exact.items():
        kt = float(k)
        if kt > 0:
            points[kt] = float(c)
    if not points:
        return math.nan, False
    if t <= 0:
        return (float(exact["0.0"]), True) if "0.0" in exact else (math.nan, False)
    xs = sorted(points)
    for x in xs:
        if x == t:
            return points[x], True
    i = bisect.bisect_left(xs, t)
    if i == 0:
        return points[xs[0]], False
    if i == len(xs):
        return points[xs[-1]], False
    lo, hi = xs[i - 1], xs[i]
    w = (math.log(t) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return points[lo] + w * (points[hi] - points[lo]), False


def sparsity_at(record: Mapping, t: float, curve_tolerances: Sequence[float] | None) -> tuple[float, bool]:
    numel = record.get("numel") or 0
    changed, exact = changed_at(record, t, curve_tolerances)
    if not numel or math.isnan(changed):
        return math.nan, exact
    return 1.0 - changed / numel, exact


def result_sparsity(result: Mapping, t: float) -> tuple[float, bool]:
    return sparsity_at(result.get("summary") or {}, t, result.get("curve_tolerances"))


def fmt_pct(fraction: float | None, digits: int = 2) -> str:
    """A fraction as a percentage; more digits near 100 % where the interesting part lives."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "–"
    pct = 100.0 * fraction
    if digits == 2 and 99.9 <= pct < 100.0:
        digits = 4
    return f"{pct:.{digits}f} %"


def fmt_tol(t: float) -> str:
    """1e-05 -> '1e-5', 3.16e-06 -> '3.16e-6'; the way the study writes tolerances."""
    if t == 0:
        return "0"
    mant, exp = f"{t:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def fmt_int(n: float | int | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    return f"{int(round(n)):,}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def fmt_seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def pair_label(result_or_request: Mapping) -> str:
    """'base → tuned' from a result (base/tuned dicts) or a request (base/tuned strings).
    A LoRA adapter side reads '<id> (LoRA r=8, alpha=16)'."""
    def name(side):
        v = result_or_request.get(side)
        adapter = v.get("adapter") if isinstance(v, Mapping) else None
        if isinstance(v, Mapping):
            v = v.get("id", "?")
            # local ids are absolute paths server-side; the last two parts say enough
            if v.startswith("/"):
                v = "/".join(v.rstrip("/").split("/")[-2:])
        label = str(v or "?")
        if isinstance(adapter, Mapping) and adapter.get("label"):
            label += f" ({adapter['label']})"
        return label
    return f"{name('base')} → {name('tuned')}"


def mean_rank(result: Mapping) -> float | None:
    rank = (result.get("summary") or {}).get("rank") or {}
    return rank.get("mean")


def stack_labels(stacks) -> dict:
    """Short names of layer stacks: the parts they do not all share ("model.language_model.layers"
    and "model.vision_tower.vision_model.encoder.layers" -> "language_model.layers", ...)."""
    named = [s for s in stacks if s]
    split = [s.split(".") for s in named]
    common = 0
    if len(split) > 1:
        while all(len(p) > common + 1 and p[common] == split[0][common] for p in split):
            common += 1
    out = {s: ".".join(p[common:]) for s, p in zip(named, split)}
    if None in stacks:
        out[None] = "layers"
    return out


def layer_names(keys) -> list[str]:
    """Axis labels of (stack, layer) keys: the index alone when there is one stack."""
    stacks = {k[0] for k in keys}
    if len(stacks) <= 1:
        return [str(k[1]) for k in keys]
    labels = stack_labels(stacks)
    return [f"{labels[k[0]]} {k[1]}" for k in keys]


def aggregate(tensors: Sequence[Mapping], t: float, curve_tolerances: Sequence[float] | None,
              by: tuple[str, ...] = ("layer", "module")) -> dict[tuple, dict]:
    """Element-weighted totals of tensor records grouped by `by` fields, at tolerance t."""
    groups: dict[tuple, dict] = {}
    for rec in tensors:
        key = tuple(rec.get(f) for f in by)
        g = groups.setdefault(key, {"numel": 0, "changed": 0.0, "exact": True, "tensors": 0})
        changed, exact = changed_at(rec, t, curve_tolerances)
        g["numel"] += rec.get("numel") or 0
        g["changed"] += 0.0 if math.isnan(changed) else changed
        g["exact"] = g["exact"] and exact
        g["tensors"] += 1
    for g in groups.values():
        g["sparsity"] = 1.0 - g["changed"] / g["numel"] if g["numel"] else math.nan
    return groups


def tensor_rows(tensors: Sequence[Mapping], t: float, curve_tolerances: Sequence[float] | None
                ) -> list[dict]:
    """Flat rows for the per-tensor table (numbers kept numeric so columns sort right)."""
    rows = []
    for rec in tensors:
        changed, _ = changed_at(rec, t, curve_tolerances)
        numel = rec.get("numel") or 0
        rows.append({
            "name": rec.get("name"),
            "stack": rec.get("stack"),
            "layer": rec.get("layer"),
            "module": rec.get("module"),
            "shape": "×".join(str(s) for s in rec.get("shape") or []),
            "dtype": rec.get("dtype"),
            "numel": numel,
            "changed": None if math.isnan(changed) else int(round(changed)),
            "sparsity": None if not numel or math.isnan(changed) else round(100 * (1 - changed / numel), 4),
            "exact_changed": (rec.get("changed") or {}).get("0.0"),
            "row_coverage": _round(rec.get("row_coverage"), 4),
            "col_coverage": _round(rec.get("col_coverage"), 4),
            "ratio": _sig(rec.get("ratio")),
            "max_abs_delta": _sig(rec.get("max_abs_delta")),
            "rank_ratio": _round(rec.get("rank_ratio"), 4),
            "added": rec.get("added") or 0,
        })
    return rows


def _round(v, n):
    return None if v is None else round(float(v), n)


def _sig(v):
    return None if v is None else float(f"{float(v):.4g}")
