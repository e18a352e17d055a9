"""analyze, overlap, demo: engine commands that need no server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli.commands.tables import overlap_table, summary_table

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
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="after the tolerance table, the N most changed tensors and the per-module table at the "
                        "chosen tolerance (default 10; 0 hides both)")
    format_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _placement_options(p)
    p.set_defaults(func=run_analyze, fast_exit=True)

    o = sub.add_parser("overlap", help="subnetwork overlap of two (or three) finetunes of one base")
    o.add_argument("base")
    o.add_argument("tuned", nargs="+", metavar="TUNED", help="two or three finetuned checkpoints")
    o.add_argument("--tolerance", type=tolerance, default=1e-5, help="a finite number >= 0 (default 1e-5)")
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    o.add_argument("--token", default=None)
    o.add_argument("--json", type=Path, default=None, help="write the overlap result here")
    format_option(o)
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


def format_option(parser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="what to print on stdout: the tables (default) or the full result as JSON, the same "
                             "document --json writes")


def _placement(args) -> dict:
    return {f"{side}_{k}": getattr(args, f"{side}_{k}", None) for side in ("base", "tuned") for k in ("subfolder", "file")}


def _options(args) -> dict:
    return dict(tolerance=args.tolerance, rank=getattr(args, "rank", "off"), geometry=getattr(args, "geometry", "off"),
                device=args.device, token=args.token, placement=_placement(args))


def _analyze_one(base_text: str | None, tuned_text: str, args, masks_dir: Path | None) -> dict:
    from subnetscope.progress import byte_bar
    from subnetscope.runner import analyze_pair

    update, close = byte_bar(Path(tuned_text).name or tuned_text, quiet=args.quiet)
    try:
        return analyze_pair(base_text, tuned_text, masks_dir=masks_dir, on_progress=update, **_options(args))
    finally:
        close()


def emit(result: dict, args, table) -> None:
    """--json writes the result to a file; stdout gets the tables or, with --format json, the result."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if getattr(args, "format", "table") == "json" else table(result))


def fail(exc) -> int:
    print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
    return 2


def run_analyze(args) -> int:
    from worker.engine import EngineError

    try:
        result = _analyze_one(args.base, args.tuned, args, args.masks)
    except EngineError as exc:
        return fail(exc)
    emit(result, args, lambda r: summary_table(r, top=args.top))
    return 0


def run_overlap(args) -> int:
    from subnetscope.progress import byte_bar
    from subnetscope.runner import overlap_of
    from worker.engine import EngineError

    if len(args.tuned) not in (2, 3):
        print("error: overlap takes a base and two or three finetuned checkpoints", file=sys.stderr)
        return 2
    closers = []

    def progress(label: str):
        update, close = byte_bar(Path(label).name or label, quiet=args.quiet)
        closers.append(close)
        return update

    try:
        result = overlap_of(args.base, args.tuned, progress=progress, **_options(args))
    except EngineError as exc:
        return fail(exc)
    finally:
        for close in closers:
            close()
    emit(result, args, overlap_table)
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
