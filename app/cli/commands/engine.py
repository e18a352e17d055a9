"""analyze, overlap, demo: engine commands that need no server."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

RANK_MODES = ("off", "sampled", "all")


def tolerance(text: str) -> float:
    """argparse type of --tolerance: the engine's Tolerance (nan, inf and negatives are refused)."""
    from worker.engine.tolerance import Tolerance

    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return float(Tolerance(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the tolerance must be a finite number >= 0") from None


def register(sub) -> None:
    p = sub.add_parser("analyze", help="diff a finetuned checkpoint against its base",
                       description="Diff TUNED against BASE. TUNED may be a PEFT LoRA adapter "
                                   "(adapter_config.json + adapter_model.safetensors): it is compared as the "
                                   "model merge_and_unload() makes of it, and BASE may then be omitted "
                                   "(the adapter's base_model_name_or_path is used).")
    p.add_argument("base", nargs="?", default=None, metavar="BASE",
                   help="Hub id (org/name or org/name@rev) or a local directory; optional when TUNED is a "
                        "LoRA adapter (default: the base its adapter_config.json names)")
    p.add_argument("tuned", metavar="TUNED",
                   help="Hub id (org/name or org/name@rev) or a local directory (a model or a LoRA adapter)")
    p.add_argument("--tolerance", type=tolerance, default=1e-5,
                   help="changed iff |delta| > tolerance; a finite number >= 0 (default 1e-5)")
    p.add_argument("--rank", choices=RANK_MODES, default="off", help="update rank of 2-D weights (default off)")
    p.add_argument("--geometry", choices=RANK_MODES, default="off",
                   help="update geometry of 2-D weights: principal energy, subspace rotation, spectral drift "
                        "(float64 SVDs; sampled = the layers rank samples; default off)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN)")
    p.add_argument("--json", type=Path, default=None, help="write the full result (schema 1) here")
    p.add_argument("--masks", type=Path, default=None, help="write masks.safetensors of changed elements here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _placement_options(p)
    p.set_defaults(func=run_analyze, fast_exit=True)

    o = sub.add_parser("overlap", help="subnetwork overlap of two (or three) finetunes of one base")
    o.add_argument("base")
    o.add_argument("tuned", nargs="+", metavar="TUNED", help="two or three finetuned checkpoints")
    o.add_argument("--tolerance", type=tolerance, default=1e-5, help="a finite number >= 0 (default 1e-5)")
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    o.add_argument("--token", default=None)
    o.add_argument("--json", type=Path, default=None)
    o.add_argument("--quiet", action="store_true")
    _placement_options(o, tuned="every TUNED")
    o.set_defaults(func=run_overlap, fast_exit=True)

    d = sub.add_parser("demo", help="write the offline demo checkpoint families (synthetic and trained)",
                       description="Write the synthetic family (base, sft, rl_a, rl_b, resized) and train the "
                                   "trained one under DIR/trained: a small Llama pretrained on addition, then "
                                   "finetuned by SFT and by RL, with checkpoint-<step>/ folders of both runs "
                                   "(about a minute on two CPU cores; the same bytes every time).")
    d.add_argument("dir", type=Path)
    d.add_argument("--no-trained", dest="trained", action="store_false",
                   help="write only the synthetic family (a second)")
    d.add_argument("--quick", action="store_true", help="a tiny training schedule (seconds; for tests)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_demo)


def _placement_options(parser, *, tuned: str = "TUNED") -> None:
    """--{base,tuned}-{subfolder,file}: where the weights are inside a checkpoint (worker/engine/checkpoints/layout.py)."""
    for side, what in (("base", "BASE"), ("tuned", tuned)):
        parser.add_argument(f"--{side}-subfolder", default=None, metavar="DIR",
                            help=f"read the weights of {what} from this folder inside it (e.g. unet, text_encoder)")
        parser.add_argument(f"--{side}-file", default=None, metavar="FILE",
                            help=f"read exactly this file of {what} (relative to the subfolder): a .safetensors "
                                 "file or a *.safetensors.index.json, e.g. consolidated.safetensors, "
                                 "model.fp16.safetensors, adapter_model.safetensors")


def _where(args, side: str) -> dict:
    return {"subfolder": getattr(args, f"{side}_subfolder", None), "file": getattr(args, f"{side}_file", None)}


def _progress_bar(quiet: bool, label: str):
    """An on_progress callback drawing a tqdm bar in bytes."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def update(p) -> None:
        bar.total = p.bytes_total
        bar.n = p.bytes_done
        svd = f" · SVDs of {p.current.removeprefix('geometry ')}" if (p.current or "").startswith("geometry ") else ""
        bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors{svd}", refresh=False)
        bar.refresh()

    return update, bar.close


def _analyze_one(base_text: str | None, tuned_text: str, args, masks_dir: Path | None) -> dict:
    from worker.engine import AnalysisOptions, analyze, open_pair, parse_source

    # A LoRA adapter as TUNED is merged onto BASE, or with no BASE onto the base its config names.
    base_spec = parse_source(base_text, allow_any_path=True, **_where(args, "base")) if base_text else None
    tuned_spec = parse_source(tuned_text, allow_any_path=True, **_where(args, "tuned"))
    base, tuned = open_pair(base_spec, tuned_spec, token=args.token)
    with base, tuned:
        update, close = _progress_bar(args.quiet, Path(tuned_text).name or tuned_text)
        try:
            options = AnalysisOptions(tolerance=args.tolerance, rank=getattr(args, "rank", "off"), device=args.device,
                                      geometry=getattr(args, "geometry", "off"))
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
    from worker.demo.synthetic import write_demo

    bar = None
    if args.trained and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, desc="training the demo", unit="%", bar_format="{l_bar}{bar}| {n:.0f}/100 {postfix}")

    def progress(fraction: float, stage: str) -> None:
        if int(100 * fraction) != int(bar.n) or stage != bar.postfix:
            bar.n = int(100 * fraction)
            bar.set_postfix_str(stage, refresh=False)
            bar.refresh()

    try:
        paths = write_demo(args.dir, trained=args.trained, quick=args.quick, progress=progress if bar else None)
    finally:
        if bar is not None:
            bar.close()
    for name, path in paths.items():
        print(f"{name:16} {path}")
    return 0


def summary_table(result: dict) -> str:
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
    share = s["ulp"]["one_step_share"]
    if share is not None:
        lines.append(f"\n{100 * share:.1f}% of changed elements moved exactly one representable step")
    if s["rank"]["mean"] is not None:
        lines.append(f"mean update rank {100 * s['rank']['mean']:.1f}% of full over {s['rank']['matrices']} matrices")
    lines += geometry_lines(s.get("geometry") or {})
    for warning in result["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


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
