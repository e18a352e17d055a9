"""What an attempt tells Redis as the engine goes: each finished tensor record at once, and its
progress (throttled) with a transfer rate and an ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.store import Store
from worker.engine.analysis import cores
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
        eta = remaining / rate if rate else None
        svd = {}
        if p.svd_matrices_total:
            # SVDs run beside the pass from its first matrix on: their own rate, in estimated seconds of work
            svd_rate = p.svd_done / elapsed if p.svd_done > 0 and elapsed > 0 else None
            svd_eta = max(p.svd_total - p.svd_done, 0.0) / svd_rate if svd_rate else None
            svd = {"svd_matrices_done": p.svd_matrices_done, "svd_matrices_total": p.svd_matrices_total,
                   "svd_done": round(p.svd_done, 2), "svd_total": round(p.svd_total, 2),
                   "svd_eta_s": round(svd_eta, 1) if svd_eta is not None else None,
                   "svd_estimate_s": round(p.svd_total / cores(), 1)}
            eta = max(eta or 0.0, svd_eta) if svd_eta is not None else eta
        write_progress({
            "tensors_done": p.tensors_done, "tensors_total": p.tensors_total,
            "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
            "bytes_per_s": round(rate, 1) if rate else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "current": p.current,
            **svd,
        })

    return on_tensor, on_progress
