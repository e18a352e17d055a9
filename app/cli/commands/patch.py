"""patch export / apply / verify, and lineage: engine commands that need no server."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from app.cli.commands.engine import fail


def register(sub) -> None:
    p = sub.add_parser("patch", help="lossless patches: rebuild a finetune's exact bytes from its base",
                       description="A patch holds what changed between BASE and TUNED, bit for bit (docs/PATCHES.md).")
    ps = p.add_subparsers(dest="patch_command", required=True, metavar="ACTION")
    e = ps.add_parser("export", help="write the patch that turns BASE into TUNED")
    e.add_argument("base", metavar="BASE", help="Hub id or local directory")
    e.add_argument("tuned", metavar="TUNED", help="Hub id or local directory")
    e.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    _common(e)
    e.set_defaults(func=run_export, fast_exit=True)
    a = ps.add_parser("apply", help="rebuild TUNED from BASE and a patch into a new directory")
    a.add_argument("base", metavar="BASE")
    a.add_argument("patch", type=Path, metavar="FILE")
    a.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                   help="a new (or empty) directory; it appears only when every file is rebuilt and checked")
    _common(a)
    a.set_defaults(func=run_apply, fast_exit=True)
    v = ps.add_parser("verify", help="check a patch's checksums, and with --base that BASE is its base")
    v.add_argument("patch", type=Path, metavar="FILE")
    v.add_argument("--base", default=None, metavar="BASE")
    _common(v)
    v.set_defaults(func=run_verify, fast_exit=True)

    g = sub.add_parser("lineage", help="which candidate is TUNED's parent? (sampled bit-identity, read by range)",
                       description="Rank candidates by the share of sampled matrix elements identical to TUNED, "
                                   "with 95%% intervals (docs/METRICS.md). Only sampled blocks are read: about "
                                   "--budget of each candidate's bytes.")
    g.add_argument("tuned", metavar="TUNED")
    g.add_argument("candidates", nargs="+", metavar="CAND")
    g.add_argument("--budget", type=float, default=0.015, help="share of each candidate's bytes to read (default 0.015)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", type=Path, default=None, help="write the full result here")
    g.add_argument("--token", default=None)
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=run_lineage, fast_exit=True)


def _common(parser) -> None:
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _open(text: str, token):
    from worker.engine import open_source, parse_source

    return open_source(parse_source(text, allow_any_path=True), token=token)


@contextlib.contextmanager
def _bar(quiet: bool, label: str):
    """A byte progress bar on stderr for the engine's `progress(stage?, done, total)` callback."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def update(*args) -> None:
        *stage, done, total = args
        if stage:
            bar.set_description_str(f"{label} ({stage[0]})", refresh=False)
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def run_export(args) -> int:
    from worker.engine import EngineError
    from worker.engine.patch.export import export_patch

    try:
        with (_open(args.base, args.token) as base, _open(args.tuned, args.token) as tuned,
              _bar(args.quiet, "export") as update):
            s = export_patch(base, tuned, args.output, progress=update)
    except EngineError as exc:
        return fail(exc)
    print(json.dumps(s, indent=1) if args.json else
          f"wrote {args.output}: {_mb(s['patch_bytes'])}, {100 * s['share']:.2f}% of the tuned checkpoint "
          f"({_mb(s['tuned_bytes'])}); {s['changed']:,} elements differ in their bits; {s['seconds']:.1f} s")
    return 0


def run_apply(args) -> int:
    from worker.engine import EngineError
    from worker.engine.patch.apply import apply_patch

    try:
        with _open(args.base, args.token) as base, _bar(args.quiet, "apply") as update:
            s = apply_patch(base, args.patch, args.output, progress=update)
    except EngineError as exc:
        return fail(exc)
    print(json.dumps(s, indent=1) if args.json else
          f"rebuilt {args.output}: {s['files']} files, {_mb(s['bytes'])}, every weight file checked against the "
          f"tuned checkpoint's digest; {s['seconds']:.1f} s")
    return 0


def run_verify(args) -> int:
    from worker.engine import EngineError
    from worker.engine.patch.apply import verify_patch

    try:
        if args.base:
            with _open(args.base, args.token) as base:
                s = verify_patch(args.patch, base)
        else:
            s = verify_patch(args.patch)
    except EngineError as exc:
        return fail(exc)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{args.patch}: intact ({_mb(s['patch_bytes'])}, {s['tensors']} tensors in {len(s['files'])} files, "
          f"{len(s['carried'])} other files); made from {s['base']['id']} to {s['tuned']['id']} "
          f"(tuned sha {str(s['tuned']['sha'])[:12]})")
    if s["base_tensors_verified"] is not None:
        print(f"base verified: {s['base_tensors_verified']} tensors match their digests")
    return 0


def run_lineage(args) -> int:
    from contextlib import ExitStack

    from worker.engine import EngineError
    from worker.engine.lineage import lineage

    if not 0 < args.budget <= 1:
        print("error: --budget is a share of the candidate's bytes, in (0, 1]", file=sys.stderr)
        return 2
    try:
        with ExitStack() as stack:
            target = stack.enter_context(_open(args.tuned, args.token))
            cands = [stack.enter_context(_open(c, args.token)) for c in args.candidates]
            result = lineage(target, cands, budget=args.budget, seed=args.seed)
    except EngineError as exc:
        return fail(exc)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(lineage_table(result))
    return 0


def lineage_table(result: dict) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = [f"target {result['target']['id']}: share of sampled matrix elements bit-identical to each candidate",
             f"{'#':>2}  {'identical':>9}  {'95% interval':>17}  {'sampled':>10}  {'read':>6}  candidate"]
    for i, r in enumerate(result["candidates"], 1):
        lines.append(f"{i:>2}  {pct(r['s']):>9}  {pct(r['low']):>8}-{pct(r['high']):<8}  {r['sampled']:>10,}  "
                     f"{pct(r['read_share']):>6}  {r['candidate']['id']}")
        if r["mismatched"]:
            m = r["mismatched"]
            lines.append(f"    {len(m)} tensors not compared (e.g. {m[0]['name']}: {m[0]['reason']})")
    first = result["candidates"][0] if result["candidates"] else None
    if first is not None and len(result["candidates"]) > 1:
        verdict = "its interval lies above every other's" if result["separated"] else \
            "its interval overlaps the next one's: read more with --budget"
        lines.append(f"most likely parent: {first['candidate']['id']} ({verdict}); exact analysis: "
                     f"subnetscope analyze {first['candidate']['id']} {result['target']['id']}")
    return "\n".join(lines)
