"""What an attempt tells Redis as the engine goes: each finished tensor record at once, and its
progress (throttled) with a transfer rate and an ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.store import Store
from worker.jobrun import Heartbeat

# Progress is written at most this often; finished tensors are written as they finish.
PROGRESS_EVERY_S = 0.2


def reporters(store: Store, aid: str, beat: Heartbeat, write_progress: Callable[[dict], object]):
    """(on_tensor, on_progress) for the engine; both stop the work once the attempt lost its claim."""
    started = time.monotonic()
    first_bytes: list[int] = []
    last_write = [0.0]

    def on_tensor(record: dict) -> None:
        beat.check()
        store.add_tensor(aid, record)

    def on_progress(p) -> None:
        beat.check()
        now = time.monotonic()
        final = p.tensors_done >= p.tensors_total
        if not final and now - last_write[0] < PROGRESS_EVERY_S:
            return
        last_write[0] = now
        if not first_bytes:
            first_bytes.append(p.bytes_done)  # bytes already done when resuming don't count for speed
        elapsed = now - started
        moved = p.bytes_done - first_bytes[0]
        rate = moved / elapsed if moved > 0 and elapsed > 0 else None
        remaining = max(p.bytes_total - p.bytes_done, 0)
        write_progress({
            "tensors_done": p.tensors_done, "tensors_total": p.tensors_total,
            "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
            "bytes_per_s": round(rate, 1) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate else None,
            "current": p.current,
        })

    return on_tensor, on_progress
