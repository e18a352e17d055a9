"""Where one matrix's SVD phase spends its time (ranks and geometry), one thread, by step.

    .venv/bin/python bench/svd_profile.py [--shapes 5632x2048,2048x2048,2048x5632]

Each shape gets a bf16 base and a tuned copy with a fifth of its elements moved by ~1 % (as
bench/synth.py's pairs), kept as the pass keeps them (512-row blocks), and runs
`svd_phase.finish_svds` once with both ranks and geometry. The steps are the phase's own
functions, timed where they are called:

    delta spectrum   Delta's Gram matrix and eigenvalues (both ranks, stable and effective rank)
    grams            the Gram matrices of W and W~
    top_eigh         their eigenvalues and top 20 % eigenvectors
    orthonormalise   U_k (or V_k) from W V_k S_k^-1 by CholeskyQR
    rotation         principal angles between the base's and the finetune's subspaces
    rest             W V_k, Delta's projections (energies), spectra for the record
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.engine.kernel import factors, lapack, svd_phase  # noqa: E402
from worker.engine.kernel import geometry as geo  # noqa: E402

STEPS = ((svd_phase, "delta_spectrum", "delta spectrum"), (factors, "gram", "grams"),
         (factors, "top_eigh", "top_eigh"), (factors, "_orthonormalise", "orthonormalise"),
         (geo, "_rotation", "rotation"))


def _timed(took: dict[str, float]) -> None:
    for module, name, label in STEPS:
        inner = getattr(module, name)

        def wrapper(*args, _inner=inner, _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                took[_label] += time.perf_counter() - started

        setattr(module, name, wrapper)


def bf16_pair(m: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(m * 7 + n)
    base = (torch.randn(m, n, generator=gen) * 0.02).bfloat16()
    moved = (base.float() * (1 + 0.01 * torch.randn(m, n, generator=gen))).bfloat16()
    tuned = torch.where(torch.rand(m, n, generator=gen) < 0.2, moved, base)
    return [(base[s:s + 512], tuned[s:s + 512]) for s in range(0, m, 512)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="5632x2048,2048x2048,2048x5632")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lapack.set_threads(1)
    warm = SimpleNamespace(shape=(64, 32), geometry_rows=bf16_pair(64, 32), rank_rows=[], want_rank=True,
                           want_geometry=True)
    svd_phase.finish_svds(warm, "cpu")  # numba's compilation of Delta's loop is not the phase's time
    took: dict[str, float] = defaultdict(float)
    _timed(took)
    print("| shape | total s | " + " | ".join(label for *_, label in STEPS) + " | rest |")
    print("|---" * (len(STEPS) + 3) + "|")
    for spec in args.shapes.split(","):
        m, n = (int(x) for x in spec.split("x"))
        acc = SimpleNamespace(shape=(m, n), geometry_rows=bf16_pair(m, n), rank_rows=[], want_rank=True,
                              want_geometry=True)
        took.clear()
        started = time.perf_counter()
        svd_phase.finish_svds(acc, "cpu")
        total = time.perf_counter() - started
        parts = [took[label] for *_, label in STEPS]
        print(f"| {m} x {n} | {total:.2f} | " + " | ".join(f"{t:.2f}" for t in parts) + f" | {total - sum(parts):.2f} |")


if __name__ == "__main__":
    main()
