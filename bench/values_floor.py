"""What geometry's singular values alone cost on this CPU, one thread, no vectors at all.

    .venv/bin/python bench/values_floor.py

Geometry reads three full spectra of every matrix: sigma(W) and sigma(W~) for the drift,
sigma(Delta) for the effective rank (and both ranks). This times, for each shape of
bench/synth.py's 1 GB pair, the float64 Gram matrices of W, W~ and Delta (spectra.gram) and
their eigenvalues by torch's `eigvalsh` (MKL's values-only path, the fastest float64 spectrum
here), best of two, and adds them up with the pair's matrix counts: a floor under any float64
geometry on this machine, to set beside modeldelta's CPU seconds from svd_peers.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from svd_profile import bf16_pair  # noqa: E402  the same pairs as the phase's profile

from worker.engine.kernel import lapack, spectra  # noqa: E402

COUNTS = {(2048, 2048): 16, (512, 2048): 16, (5632, 2048): 16, (2048, 5632): 8, (32000, 2048): 2}  # the 1 GB pair


def main() -> None:
    torch.set_num_threads(1)
    lapack.set_threads(1)
    total = 0.0
    for (m, n), count in COUNTS.items():
        rows = bf16_pair(m, n)
        base = [b.float() for b, _ in rows]
        tuned = [t.float() for _, t in rows]
        delta = [t - b for b, t in zip(base, tuned)]
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for blocks in (base, tuned, delta):
                g, _ = spectra.gram(lambda blocks=blocks: iter(blocks), (m, n), "cpu")
                torch.linalg.eigvalsh(g)
            best = min(best, time.perf_counter() - started)
        total += count * best
        print(f"{m} x {n}: {best:.2f} s x {count}")
    print(f"three float64 spectra of every matrix: {total:.1f} CPU s")


if __name__ == "__main__":
    main()
