"""The `subnetscope` command: serve, worker, and the engine's commands (analyze, overlap, dynamics, demo)."""

from app.cli.main import main

__all__ = ["main"]
