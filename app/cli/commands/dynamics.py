"""`subnetscope dynamics BASE RUN`: training dynamics over a run's checkpoints, no server needed."""

from __future__ import annotations

from pathlib import Path

from app.cli.commands.engine import emit, fail, format_option, tolerance
from worker.engine.tolerance import tolerance_key


def register(sub) -> None:
    from worker.engine.checkpoints.training_run import MAX_CHECKPOINTS

    p = sub.add_parser(
        "dynamics", help="sparsity across a training run's checkpoints",
        description="Compare every checkpoint c_1..c_k of a run with the base, and each with the one before "
                    "(docs/METRICS.md, 'Training dynamics'): sparsity at every exact tolerance, consecutive-update "
                    "sparsity, the ever-changed set and its share outside the subnetwork, overlap with the final "
                    "subnetwork; per layer in --json. RUN is a directory of checkpoint-<step>/ folders (HF "
                    "Trainer / TRL layout) or a Hub repo whose branches/tags are the checkpoints. Masks of the "
                    "k analyses are kept in a temporary directory meanwhile (k x parameters / 8 bytes).")
    p.add_argument("base", nargs="?", default=None, metavar="BASE",
                   help="Hub id (org/name[@rev]) or a local directory; default: the run's first checkpoint")
    p.add_argument("run", metavar="RUN", help="a directory of checkpoint-<step>/ folders, or a Hub repo org/name")
    p.add_argument("--revisions", default=None, metavar="PATTERN|LIST",
                   help="which checkpoints: a glob pattern ('step*') or a comma list ('step-100,step-300'); "
                        "default: every checkpoint-<n> folder, or every branch/tag with a number in its name")
    p.add_argument("--tolerance", type=tolerance, default=1e-5,
                   help="changed iff |delta| > tolerance, for the sets (E, I, overlap); a finite number >= 0 "
                        "(default 1e-5); sparsity is reported at every exact tolerance too")
    p.add_argument("--max-checkpoints", type=int, default=None,
                   help=f"refuse runs with more checkpoints than this (default: SUBNETSCOPE_MAX_RUN_CHECKPOINTS, "
                        f"{MAX_CHECKPOINTS})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN)")
    p.add_argument("--json", type=Path, default=None, help="write the full dynamics result here")
    format_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_dynamics)


def _limit(args) -> int:
    if args.max_checkpoints is not None:
        return args.max_checkpoints
    from app.core.settings import Settings

    return Settings().max_run_checkpoints


def run_dynamics(args) -> int:
    from subnetscope.progress import RunBar
    from subnetscope.runner import dynamics_of
    from worker.engine import EngineError

    try:
        result = dynamics_of(args.base, args.run, revisions=args.revisions, limit=_limit(args),
                             tolerance=args.tolerance, device=args.device, token=args.token,
                             progress=lambda total, label: RunBar(total, label, quiet=args.quiet))
    except EngineError as exc:
        return fail(exc)
    emit(result, args, dynamics_table)
    return 0


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def dynamics_table(result: dict) -> str:
    key = result["tolerance_key"]
    run = result.get("run") or {}
    base = result.get("base") or {}
    base_name = f"{run['base_name']} of the run" if run.get("base_name") else str(base.get("id"))
    tols = [tolerance_key(t) for t in result["tolerances"]]
    lines = [
        f"run    {run.get('id', '?')}  ({len(result['checkpoints'])} checkpoints)",
        f"base   {base_name}  ({str(base.get('sha', ''))[:12]})",
        f"{result['numel']:,} elements; sets at t = {result['tolerance']:g}",
        "",
        f"{'step':>8}  {'checkpoint':<20} {'sparsity':>9} {'consec.':>9} {'ever-chg':>9} {'outside':>9} "
        f"{'o1 final':>9} {'o2 final':>9} {'(random)':>9}",
    ]
    for c in result["checkpoints"]:
        cons = (c.get("consecutive") or {}).get("sparsity") or {}
        step = "" if c["step"] is None else str(c["step"])
        lines.append(
            f"{step:>8}  {c['name'][:20]:<20} {_pct(c['sparsity'].get(key)):>9} {_pct(cons.get(key)):>9} "
            f"{_pct(c['ever_density']):>9} {_pct(c['outside_share']):>9} {_pct(c['o1']):>9} {_pct(c['o2']):>9} "
            f"{_pct(c['random_o1']):>9}")
    lines += ["", "sparsity (base vs checkpoint) at every exact tolerance:",
              f"{'checkpoint':<20} " + " ".join(f"{float(t):>8.0e}" for t in tols)]
    for c in result["checkpoints"]:
        lines.append(f"{c['name'][:20]:<20} " + " ".join(
            f"{'n/a' if c['sparsity'].get(t) is None else format(100 * c['sparsity'][t], '.2f'):>8}" for t in tols))
    lines += ["", "consec. = sparsity of the update from the previous checkpoint (the first: from the base); "
                  "ever-chg = |E_i|/n, E_i = union of the changed sets so far; outside = |E_i \\ I_i| / |E_i|; "
                  "o1 = |I_i & I_k|/|I_i|, o2 = |I_i & I_k|/|I_k| with the final set I_k (random o1 = |I_k|/n)."]
    for warning in result.get("warnings") or []:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
