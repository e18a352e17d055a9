"""Geometry's eigensolver on its own: torch's `eigh` (all vectors) against `lapack.top_eigh`
(every eigenvalue, the top 20 % vectors), on the Gram matrices of two 5632 x 2048 bf16 matrices
(an MLP matrix of the bench pair), one thread each: alone, and two jobs side by side as the SVD
phase runs them; then `top_eigh`'s LAPACK steps one by one.

    .venv/bin/python bench/subset_eigh.py [--side 2048] [--rows 5632]

Best of two runs each; machines are noisy, so compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.engine.kernel import lapack, spectra  # noqa: E402


def _solve(kind: str, g: torch.Tensor, k: int) -> float:
    x = g.clone()
    started = time.perf_counter()
    if kind == "eigh":
        torch.linalg.eigh(x)
    else:
        lapack.top_eigh(x, k, overwrite=True)
    return time.perf_counter() - started


def _side_by_side(kind: str, grams: list[torch.Tensor], k: int) -> float:
    took = [0.0, 0.0]

    def job(i: int) -> None:
        torch.set_num_threads(1)
        took[i] = _solve(kind, grams[i], k)

    threads = [threading.Thread(target=job, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(took)


def _steps(g: torch.Tensor, k: int) -> dict[str, float]:
    """top_eigh's calls one at a time (the same calls, timed apart)."""
    lib, r = lapack._lapack(), g.shape[0]
    a = g.clone()
    d, e, tau = torch.empty(r, dtype=torch.float64), torch.zeros(r, dtype=torch.float64), torch.empty(r - 1, dtype=torch.float64)
    w, zt, support = torch.empty(r, dtype=torch.float64), torch.empty(k, r, dtype=torch.float64), torch.empty(2 * k, dtype=torch.int64)
    found, tryrac = lapack._I64(), lapack._I64(0)
    out, t = {}, time.perf_counter()
    lib.sytrd(lapack.COL_MAJOR, b"U", r, a.data_ptr(), r, d.data_ptr(), e.data_ptr(), tau.data_ptr())
    out["dsytrd"], t = time.perf_counter() - t, time.perf_counter()
    lam, off = d.clone(), e.clone()
    lib.sterf(r, lam.data_ptr(), off.data_ptr())
    out["dsterf"], t = time.perf_counter() - t, time.perf_counter()
    lib.stemr(lapack.COL_MAJOR, b"V", b"I", r, d.data_ptr(), e.data_ptr(), 0.0, 0.0, r - k + 1, r, ctypes.byref(found),
              w.data_ptr(), zt.data_ptr(), r, k, support.data_ptr(), ctypes.byref(tryrac))
    out["dstemr"], t = time.perf_counter() - t, time.perf_counter()
    lib.ormtr(lapack.COL_MAJOR, b"L", b"U", b"N", r, k, a.data_ptr(), r, tau.data_ptr(), zt.data_ptr(), r)
    out["dormtr"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=5632)
    args = ap.parse_args()
    if not lapack.available():
        sys.exit("scipy-openblas64 is not installed: top_eigh would be eigh")
    torch.set_num_threads(1)
    lapack.set_threads(1)
    k = -(-args.side // 5)
    grams = []
    for seed in (0, 1):
        w = torch.randn(args.rows, args.side, generator=torch.Generator().manual_seed(seed)).bfloat16()
        grams.append(spectra.gram(lambda w=w: iter([w]), (args.rows, args.side), "cpu")[0])
    print(f"Gram matrices {args.side} x {args.side} of {args.rows} x {args.side} bf16, top {k} vectors, one thread each")
    for kind in ("eigh", "top_eigh"):
        alone = min(_solve(kind, grams[0], k) for _ in range(2))
        paired = min(_side_by_side(kind, grams, k) for _ in range(2))
        print(f"  {kind:9s} alone {alone:.2f} s   two side by side {paired:.2f} s")
    steps = [_steps(grams[0], k) for _ in range(2)]
    print("  top_eigh steps: " + ", ".join(f"{name} {min(s[name] for s in steps):.2f} s" for name in steps[0]))


if __name__ == "__main__":
    main()
