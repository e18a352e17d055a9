"""analyze, overlap, demo: engine commands that need no server."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

RANK_MODES = ("off", "sampled", "all")


def tolerance(text: str) -> float:
    """argparse type of --tolerance: a finite number >= 0 (nan, inf and negatives are refused)."""
    import math

    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(t) or t < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the tolerance must be a finite number >= 0")
    return t + 0.0


def register(sub) -> None:
    p = sub.add_parser("analyze", help="diff a finetuned checkpoint against its base")
    p.add_argument("base", help="Hub id (org/name or org/name@rev) or a local directory")
    p.add_argument("tuned", help="Hub id (org/name or org/name@rev) or a local directory")
    p.add_argument("--tolerance", type=tolerance, default=1e-5,
                   help="changed iff |delta| > tolerance; a finite number >= 0 (default 1e-5)")
    p.add_argument("--rank", choices=RANK_MODES, default="off", help="update rank of 2-D weights (default off)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN)")
    p.add_argument("--json", type=Path, default=None, help="write the full result (schema 1) here")
    p.add_argument("--masks", type=Path, default=None, help="write masks.safetensors of changed elements here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_analyze)

    o = sub.add_parser("overlap", help="subnetwork overlap of two (or three) finetunes of one base")
    o.add_argument("base")
    o.add_argument("tuned", nargs="+", metavar="TUNED", help="two or three finetuned checkpoints")
    o.add_argument("--tolerance", type=tolerance, default=1e-5, help="a finite number >= 0 (default 1e-5)")
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    o.add_argument("--token", default=None)
    o.add_argument("--json", type=Path, default=None)
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=run_overlap)

    d = sub.add_parser("demo", help="write the offline demo checkpoint family")
    d.add_argument("dir", type=Path)
    d.set_defaults(func=run_demo)


def _progress_bar(quiet: bool, label: str):
    """An on_progress callback drawing a tqdm bar in bytes."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def update(p) -> None:
        bar.total = p.bytes_total
        bar.n = p.bytes_done
        bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors", refresh=False)
        bar.refresh()

    return update, bar.close


def _analyze_one(base_text: str, tuned_text: str, args, masks_dir: Path | None) -> dict:
    from worker.engine import AnalysisOptions, analyze, open_source, parse_source

    base = open_source(parse_source(base_text, allow_any_path=True), token=args.token)
    tuned = open_source(parse_source(tuned_text, allow_any_path=True), token=args.token)
    with base, tuned:
        update, close = _progress_bar(args.quiet, Path(tuned_text).name or tuned_text)
        try:
            options = AnalysisOptions(tolerance=args.tolerance, rank=getattr(args, "rank", "off"), device=args.device)
            return analyze(base, tuned, options, masks_dir=masks_dir, on_progress=update)
        finally:
            close()


def _emit(result: dict, json_path: Path | None, table) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
    print(table(result))


def _fail(exc) -> int:
    print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
    return 2


def run_analyze(args) -> int:
    from worker.engine import EngineError

    try:
        result = _analyze_one(args.base, args.tuned, args, args.masks)
    except EngineError as exc:
        return _fail(exc)
    _emit(result, args.json, summary_table)
    return 0


def run_overlap(args) -> int:
    from worker.engine import EngineError, overlap

    if len(args.tuned) not in (2, 3):
        print("error: overlap takes a base and two or three finetuned checkpoints", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="subnetscope-masks-") as tmp:
            files = []
            for i, tuned in enumerate(args.tuned):
                masks_dir = Path(tmp) / str(i)
                _analyze_one(args.base, tuned, args, masks_dir)
                files.append(masks_dir / "masks.safetensors")
            result = overlap(files, labels=args.tuned)
    except EngineError as exc:
        return _fail(exc)
    _emit(result, args.json, overlap_table)
    return 0


def run_demo(args) -> int:
    from worker.engine import write_demo

    for name, path in write_demo(args.dir).items():
        print(f"{name:8} {path}")
    return 0


def summary_table(result: dict) -> str:
    s = result["summary"]
    lines = [
        f"base   {result['base']['id']}  ({result['base']['sha'][:12]})",
        f"tuned  {result['tuned']['id']}  ({result['tuned']['sha'][:12]})",
        f"{s['numel']:,} elements compared in {s['tensors']} tensors, {s['seconds']:.1f} s on {s['device']}",
        "",
        f"{'tolerance':>10}  {'changed':>14}  {'sparsity':>9}" + ("  study" if result.get("reference") else ""),
    ]
    ref = (result.get("reference") or {}).get("sparsity", {})
    for key, changed in s["changed"].items():
        study = f"  {ref[key]:.2f}%" if key in ref else ""
        lines.append(f"{float(key):>10.0e}  {changed:>14,}  {100 * s['sparsity'][key]:>8.2f}%{study}")
    share = s["ulp"]["one_step_share"]
    if share is not None:
        lines.append(f"\n{100 * share:.1f}% of changed elements moved exactly one representable step")
    if s["rank"]["mean"] is not None:
        lines.append(f"mean update rank {100 * s['rank']['mean']:.1f}% of full over {s['rank']['matrices']} matrices")
    for warning in result["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def overlap_table(result: dict) -> str:
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
