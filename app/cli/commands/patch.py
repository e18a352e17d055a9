"""patch export / apply / verify, and lineage: engine commands that need no server."""

from __future__ import annotations

import json
import sys
from pathlib import Path


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


def _common(parser) -> None:
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _open(text: str, token):
    from worker.engine import open_source, parse_source

    return open_source(parse_source(text, allow_any_path=True), token=token)


def _bar(quiet: bool, label: str):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def update(*args) -> None:
        *stage, done, total = args
        if stage:
            bar.set_description_str(f"{label} ({stage[0]})", refresh=False)
        bar.total, bar.n = total, done
        bar.refresh()

    return update, bar.close


def _fail(exc) -> int:
    print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
    return 2


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def run_export(args) -> int:
    from worker.engine import EngineError
    from worker.engine.patch.export import export_patch

    try:
        with _open(args.base, args.token) as base, _open(args.tuned, args.token) as tuned:
            update, close = _bar(args.quiet, "export")
            try:
                s = export_patch(base, tuned, args.output, progress=update)
            finally:
                close()
    except EngineError as exc:
        return _fail(exc)
    print(json.dumps(s, indent=1) if args.json else
          f"wrote {args.output}: {_mb(s['patch_bytes'])}, {100 * s['share']:.2f}% of the tuned checkpoint "
          f"({_mb(s['tuned_bytes'])}); {s['changed']:,} elements differ in their bits; {s['seconds']:.1f} s")
    return 0


def run_apply(args) -> int:
    from worker.engine import EngineError
    from worker.engine.patch.apply import apply_patch

    try:
        with _open(args.base, args.token) as base:
            update, close = _bar(args.quiet, "apply")
            try:
                s = apply_patch(base, args.patch, args.output, progress=update)
            finally:
                close()
    except EngineError as exc:
        return _fail(exc)
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
        return _fail(exc)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{args.patch}: intact ({_mb(s['patch_bytes'])}, {s['tensors']} tensors in {len(s['files'])} files, "
          f"{len(s['carried'])} other files); made from {s['base']['id']} to {s['tuned']['id']} "
          f"(tuned sha {str(s['tuned']['sha'])[:12]})")
    if s["base_tensors_verified"] is not None:
        print(f"base verified: {s['base_tensors_verified']} tensors match their digests")
    return 0
