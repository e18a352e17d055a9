"""The CLI's short precision table (metrics.md, "Precision and magnitude"): changed share by |w_base|,
the share that moved at most one step, and the bf16 / fp16 storage counterfactuals."""

from __future__ import annotations

SHOWN = ("0.0", "1e-08", "1e-05", "0.001")  # tolerances shown as columns (the JSON has all seven)
MIN_SHARE = 1e-4  # magnitude bins holding fewer of the compared elements are summed in one line


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def precision_lines(p: dict | None) -> list[str]:
    if not p:
        return []
    total = sum(p["compared"]) or 1
    keys = [k for k in SHOWN if k in p["changed"]]
    one = p.get("one_step_share") or [None] * len(p["bins"])
    lines = ["", "changed share by base magnitude |w| (binary exponent; one step: |Δ| <= spacing(w))",
             f"{'|w| in':>10}  {'compared':>12}  " + "  ".join(f"{'t=' + k:>8}" for k in keys) + f"  {'one step':>8}"]
    rest = 0
    for i, label in enumerate(p["labels"]):
        n = p["compared"][i]
        if n / total < MIN_SHARE:
            rest += n
            continue
        shares = "  ".join(f"{_pct(p['changed'][k][i] / n):>8}" for k in keys)
        lines.append(f"{label:>10}  {n:>12,}  {shares}  {_pct(one[i]):>8}")
    if rest:
        lines.append(f"{'(other)':>10}  {rest:>12,}  elements in bins under {100 * MIN_SHARE:g}% each")
    for name, cf in (p.get("counterfactual") or {}).items():
        stored, rounded = cf["stored"].get("0.0", 0), cf["rounded"].get("0.0", 0)
        erased = 1 - rounded / stored if stored else None
        lines.append(f"{name} storage counterfactual ({cf['numel']:,} elements of {cf['tensors']} tensors): "
                     f"{stored:,} changed as stored, {rounded:,} after rounding both sides to {name} "
                     f"(t = 0; {_pct(erased)} of the updates erased)")
    if p.get("cosine") is not None:
        lines.append(f"cosine similarity of base and tuned {p['cosine']:.10f} (float64 sums)")
    return lines
