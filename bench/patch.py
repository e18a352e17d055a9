"""Lossless patches on bench/synth.py's pair: size, and export / apply wall against the analysis.

All three run as the CLI would (`subnetscope analyze`, `patch export`, `patch apply`), one
process each, in one run from warm page cache; each process's peak RSS comes from wait4.
Prints one JSON object: patch share of the tuned checkpoint, the analysis's estimate beside
the exported size, export / analysis and apply / analysis wall-time ratios, peak RSS.

    python bench/patch.py [--size-gb 1.0 | --shape llama8b] [--out bench/out] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from throughput import generate, warm_cache  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]


def timed(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one CLI process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(CLI + args, stdout=out, stderr=subprocess.PIPE, env=env, cwd=REPO)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{args[0]} failed: {p.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--shape", choices=("llama8b",), default=None)
    p.add_argument("--out", type=Path, default=HERE / "out")
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the best wall is kept")
    a = p.parse_args()
    base, tuned = generate(a.out, a.size_gb, a.shape)
    work = Path(tempfile.mkdtemp(prefix="patch-bench-", dir=a.out))
    try:
        warm_cache([base, tuned])
        result_json, patch, rebuilt = work / "result.json", work / "p.patch", work / "rebuilt"
        runs: dict[str, list[tuple[float, int]]] = {"analyze": [], "export": [], "apply": []}
        for _ in range(a.repeat):
            wall, rss, _ = timed(["analyze", str(base), str(tuned), "--quiet", "--json", str(result_json)])
            runs["analyze"].append((wall, rss))
            patch.unlink(missing_ok=True)
            wall, rss, _ = timed(["patch", "export", str(base), str(tuned), "-o", str(patch), "--quiet", "--json"])
            runs["export"].append((wall, rss))
            shutil.rmtree(rebuilt, ignore_errors=True)
            wall, rss, _ = timed(["patch", "apply", str(base), str(patch), "-o", str(rebuilt), "--quiet", "--json"])
            runs["apply"].append((wall, rss))
        tuned_bytes = sum(f.stat().st_size for f in tuned.glob("*.safetensors"))
        same = all((rebuilt / f.name).read_bytes() == f.read_bytes() for f in tuned.iterdir() if f.is_file())
        estimate = json.loads(result_json.read_text())["patch"]
        best = {k: min(v) for k, v in runs.items()}
        size = patch.stat().st_size
        print(json.dumps({
            "shape": a.shape or f"{a.size_gb:g} GB", "tuned_bytes": tuned_bytes, "patch_bytes": size,
            "patch_share_pct": round(100 * size / tuned_bytes, 2),
            "estimate_bytes": estimate["bytes"], "estimate_error_pct": round(100 * (estimate["bytes"] - size) / size, 2),
            "analyze_s": round(best["analyze"][0], 2), "export_s": round(best["export"][0], 2),
            "apply_s": round(best["apply"][0], 2),
            "export_over_analyze": round(best["export"][0] / best["analyze"][0], 2),
            "apply_over_analyze": round(best["apply"][0] / best["analyze"][0], 2),
            "peak_rss_mib": {k: round(max(r for _, r in v) / 2**20) for k, v in runs.items()},
            "rebuilt_identical": same, "cpus": os.cpu_count(),
        }, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
