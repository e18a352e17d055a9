"""Child processes that end with their parent: embedded Redis, workers, web processes, the demo trainer."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM this child when the parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
