"""Notes on a comparison: the engine's warnings, plus a sentence for each unmatched group
(only-in-one-side, shape mismatch, resized, re-typed, tied tensors) they do not already name.
Shown on the analysis page and in the report."""

from __future__ import annotations

from collections.abc import Mapping

from . import numbers as N


def comparison_notes(result: Mapping) -> list[str]:
    """The engine's warnings, plus a sentence for each unmatched group they don't already name."""
    engine = [str(w) for w in result.get("warnings") or []]
    said = " ".join(engine)
    um = result.get("unmatched") or {}
    ours = []

    def new_names(xs, key=None):
        names = [str(x.get(key) if key else x) for x in xs or []]
        return [n for n in names if n not in said]

    def listing(names):
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    if names := new_names(um.get("only_base")):
        ours.append(f"{len(names)} tensor(s) only in the base, not compared: {listing(names)}.")
    if names := new_names(um.get("only_tuned")):
        ours.append(f"{len(names)} tensor(s) only in the finetuned model, not compared: {listing(names)}.")
    if names := new_names(um.get("shape_mismatch"), "name"):
        ours.append(f"{len(names)} tensor(s) differ in shape and were not compared: {listing(names)}.")
    for r in um.get("resized") or []:
        if r["name"] not in said:
            extra = (f"{N.fmt_int(r.get('removed'))} removed" if r.get("removed") and not r.get("added")
                     else f"{N.fmt_int(r.get('added'))} added")
            ours.append(f"{r['name']} was resized {r.get('base_shape')} → {r.get('tuned_shape')}: common rows "
                        f"compared, {extra} elements reported separately.")
    if names := new_names(um.get("dtype_mismatch"), "name"):
        ours.append(f"{len(names)} tensor(s) changed dtype; both sides were cast to the narrower one "
                    f"(float32 for equal widths, e.g. bf16 vs fp16) before comparing: {listing(names)}.")
    if names := new_names(um.get("tied")):
        ours.append(f"{len(names)} tied tensor(s) counted once: {listing(names)}.")
    return list(dict.fromkeys(engine + ours))
