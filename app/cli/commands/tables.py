"""What the engine commands print: the tolerance table, top tensors, per-module table, the
geometry table, the overlap table, and the plain summary (frontend/summary.py, the same words as
the analysis page and the report)."""

from __future__ import annotations

import textwrap

from app.cli.precision_table import precision_lines
from frontend.summary import module_rows, overlap_summary, plain_summary, top_tensors


def rank_lines(rank: dict) -> list[str]:
    """Both update ranks (metrics.md "Update rank"): the study's float32 rule first, as the study's."""
    if rank.get("mean") is None:
        return []
    f64 = rank.get("f64") or {}
    lines = ["", f"update rank over {rank['matrices']} matrices   {'mean':>7}  {'weighted':>8}",
             f"  study (float32 matrix_rank)  {100 * rank['mean']:>6.1f}%  {100 * (rank['weighted_mean'] or 0):>7.1f}%"]
    if f64.get("mean") is not None:
        lines.append(f"  float64 numerical rank       {100 * f64['mean']:>6.1f}%  {100 * (f64['weighted_mean'] or 0):>7.1f}%")
    return lines


def summary_table(result: dict, top: int = 10) -> str:
    """The tolerance table, the plain summary and (top > 0) the most changed tensors and modules."""
    s = result["summary"]
    lines = [
        f"base   {side_label(result['base'])}  ({result['base']['sha'][:12]})",
        f"tuned  {side_label(result['tuned'])}  ({result['tuned']['sha'][:12]})",
        f"{s['numel']:,} elements compared in {s['tensors']} tensors, {s['seconds']:.1f} s on {s['device']}",
        "",
        f"{'tolerance':>10}  {'changed':>14}  {'sparsity':>9}" + ("  study" if result.get("reference") else ""),
    ]
    ref = (result.get("reference") or {}).get("sparsity", {})
    for key, changed in s["changed"].items():
        study = f"  {ref[key]:.2f}%" if key in ref else ""
        lines.append(f"{float(key):>10.0e}  {changed:>14,}  {100 * s['sparsity'][key]:>8.2f}%{study}")
    if s.get("nan"):
        lines.append(f"\n{s['nan']:,} NaN elements (NaN in either side) are counted as changed at every tolerance")
    patch = result.get("patch")
    if patch and patch.get("share") is not None:
        lines.append(f"a lossless patch of this update: about {patch['bytes'] / 1e6:,.1f} MB, "
                     f"{100 * patch['share']:.1f}% of the checkpoint (subnetscope patch export)")
    share = s["ulp"]["one_step_share"]
    if share is not None:
        lines.append(f"\n{100 * share:.1f}% of changed elements moved exactly one representable step")
    lines += rank_lines(s["rank"])
    lines += geometry_lines(s.get("geometry") or {})
    lines += precision_lines(s.get("precision"))
    if top > 0:
        lines += top_lines(result, top)
    for warning in result["warnings"]:
        lines.append(f"warning: {warning}")
    lines += ["", wrap(plain_summary(result))]
    return "\n".join(lines)


def _t(result: dict) -> float:
    return float((result.get("options") or {}).get("tolerance", 1e-5))


def top_lines(result: dict, top: int) -> list[str]:
    """The `top` most changed tensors and every module type, at the chosen tolerance."""
    t = _t(result)
    rows = top_tensors(result, t, top)
    if not rows:
        return []
    width = min(max(len(r["name"] or "") for r in rows), 60)
    lines = ["", f"top {len(rows)} tensors by changed share at t = {t:g}",
             f"{'tensor':<{width}}  {'shape':>12}  {'changed':>12}  {'sparsity':>9}"]
    for r in rows:
        lines.append(f"{(r['name'] or '')[-width:]:<{width}}  {r['shape']:>12}  {r['changed']:>12,}  "
                     f"{r['sparsity']:>8.2f}%")
    modules = module_rows(result, t)
    if modules:
        mw = min(max(len(str(m[0])) for m in modules), 40)
        lines += ["", f"per module type at t = {t:g} (most changed first)",
                  f"{'module':<{mw}}  {'elements':>14}  {'changed':>14}  {'sparsity':>10}"]
        lines += [f"{str(name)[-mw:]:<{mw}}  {n:>14}  {c:>14}  {s:>10}" for name, n, c, s in modules]
    return lines


def geometry_lines(g: dict) -> list[str]:
    """The whole-model update geometry (element-weighted over matrices), when it was computed."""
    if not g.get("matrices"):
        return []
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    num = lambda x, f: "n/a" if x is None else format(x, f)  # noqa: E731
    e, b, rot = g["energy"], g["baseline"], g["rotation"]
    lines = ["", f"update geometry over {g['matrices']} matrices (element-weighted; SVDs {g['seconds']:.1f} s)",
             f"{'k':>5}  {'two-sided':>9} {'(random)':>9}  {'left':>7} {'(random)':>9}  {'right':>7} {'(random)':>9}"
             f"  {'rot U':>6} {'rot V':>6}"]
    for i, q in enumerate(g["q"]):
        lines.append(f"{100 * q:>4.0f}%  {pct(e['two_sided'][i]):>9} {pct(b['two_sided'][i]):>9}  "
                     f"{pct(e['left'][i]):>7} {pct(b['left'][i]):>9}  {pct(e['right'][i]):>7} {pct(b['right'][i]):>9}"
                     f"  {num(rot['u_mean_sin'][i], '.4f'):>6} {num(rot['v_mean_sin'][i], '.4f'):>6}")
    lines.append(f"spectral drift {num(g['drift'], '.3g')}; stable rank of Δ {num(g['stable_rank'], '.1f')}, "
                 f"effective rank {num(g['effective_rank'], '.1f')}; rot = mean sin of principal angles")
    return lines


def side_label(side: dict) -> str:
    """'org/name', or for a LoRA adapter 'org/name (LoRA r=8, alpha=16)'."""
    adapter = side.get("adapter")
    return f"{side['id']} ({adapter['label']})" if adapter else str(side["id"])


def overlap_table(result: dict) -> str:
    return _overlap_lines(result) + "\n\n" + wrap(overlap_summary(result))


def wrap(paragraph: str, width: int = 100) -> str:
    """Wrapped at spaces, never between a number and its unit ("2.82 %")."""
    nbsp = "\u00a0"
    return textwrap.fill(paragraph.replace(" %", nbsp + "%").replace(" MB", nbsp + "MB").replace(" KB", nbsp + "KB")
                         .replace(" GB", nbsp + "GB"), width=width).replace(nbsp, " ")


def _overlap_lines(result: dict) -> str:
    fmt = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    a, b = result["labels"][:2]
    return "\n".join(
        [
            f"{result['numel']:,} elements, tolerance {result['tolerance']:g}",
            f"changed: {a} {result['a_changed']:,}, {b} {result['b_changed']:,}, both {result['both']:,}",
            f"o1 = |A&B|/|A| = {fmt(result['o1'])}   (random {fmt(result['random_o1'])})",
            f"o2 = |A&B|/|B| = {fmt(result['o2'])}   (random {fmt(result['random_o2'])})",
            f"Jaccard = {fmt(result['jaccard'])}",
        ]
    )
