"""The `subnetscope` console script.

Only argument wiring lives here; each subcommand's body is in `app/commands/`.
Server-side imports (redis, rq, fastapi, dash) stay inside the server commands so
that `subnetscope analyze` works on a machine with no server at all.
"""

from __future__ import annotations

import argparse
import sys

from app.commands import engine as engine_commands
from app.commands import server as server_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subnetscope",
        description="Which parameters did a finetuning run actually change?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_commands.register(sub)
    server_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
