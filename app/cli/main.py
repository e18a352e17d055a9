"""The `subnetscope` console script.

Only argument wiring lives here; each subcommand's body is in `app/cli/commands/`.
Server-side imports (redis, rq, fastapi, dash) stay inside the server commands so
that `subnetscope analyze` works on a machine with no server at all.
"""

from __future__ import annotations

import argparse
import os
import sys

from app.cli.commands import dynamics as dynamics_commands
from app.cli.commands import engine as engine_commands
from app.cli.commands import patch as patch_commands
from app.cli.commands import report as report_commands
from app.cli.commands import server as server_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subnetscope",
        description="Which parameters did a finetuning run actually change?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_commands.register(sub)
    patch_commands.register(sub)
    dynamics_commands.register(sub)
    report_commands.register(sub)
    server_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = int(args.func(args) or 0)
    if argv is None and getattr(args, "fast_exit", False):
        # The console script owns this process and the command has written everything:
        # skip the interpreter's teardown of torch and numba (~0.6 s, as long as the whole
        # analysis of a 1 GB pair). Never when called as a library (argv given).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
