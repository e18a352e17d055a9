"""Our SVD phase (update rank, geometry) side by side with `modeldelta` on the bench pair.

    .venv/bin/pip install -e '.[bench]'         # modeldelta 0.4.4: a benchmark-only peer
    .venv/bin/python bench/svd_peers.py [--size-gb 1.0] [--shape llama8b] [--runs peer,rank,geometry]
                                        [--rank all] [--geometry all]

Each method runs once, in a fresh process after a warm read of the files (peak RSS is its
own; see throughput.py "Measuring memory honestly"), one after another on the same pair:

  modeldelta   its core `compare_models` over the two checkpoints: per matrix, the float32
               singular values of Delta (`torch.linalg.svdvals`) and statistics of them. Its
               CLI only adds a Hub metadata look-up (the Hub is not reachable here) and a report.
  ours         `subnetscope analyze BASE TUNED --rank MODE` (both update ranks of every matrix)
  ours+geo     the same with `--geometry MODE` too (principal energies, rotations, drift)

and prints wall seconds, CPU seconds and peak RSS, with the ratios to modeldelta's wall.
Results go to --out/svd_peers.json. The targets (issue 15): ours --rank all <= 0.25x
modeldelta's wall, ours --rank all --geometry all <= 1.0x, peak RSS <= 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import GIB, fmt_bytes, generate, ours_cmd, run_measured, warm_cache  # noqa: E402

PEER_SCRIPT = r"""
import json, sys, time
from modeldelta.core.weight_diff import compare_models
from modeldelta.utils.model_loader import get_tensor_map
a, b, out = sys.argv[1:4]
t = time.perf_counter()
results, skipped = compare_models(get_tensor_map(a), get_tensor_map(b))
svd = [r for r in results if r.get("has_svd")]
json.dump({"seconds": time.perf_counter() - t, "tensors": len(results), "svd_matrices": len(svd),
           "skipped": skipped}, open(out, "w"))
"""


def peer_available() -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('modeldelta'))"],
                       capture_output=True, text=True)
    return r.returncode == 0, r.stdout.strip() or r.stderr.strip()[-200:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--shape", choices=("llama8b",), default=None)
    p.add_argument("--out", type=Path, default=HERE / "out")
    p.add_argument("--rank", choices=("sampled", "all"), default="all")
    p.add_argument("--geometry", choices=("off", "sampled", "all"), default="all")
    p.add_argument("--runs", default="peer,rank,geometry", help="comma list of peer, rank, geometry")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    runs = set(a.runs.split(","))
    base, tuned = generate(a.out, a.size_gb, a.shape)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    log = print
    M: dict = {"pair": str(base.parent), "rank": a.rank, "geometry": a.geometry}
    if "peer" in runs:
        ok, version = peer_available()
        if not ok:
            print(f"modeldelta is not installed ({version}): pip install -e '.[bench]'")
            return 2
        M["peer_version"] = version
        warm_cache([base, tuned])
        out = a.out / "modeldelta.json"
        M["modeldelta"] = run_measured([sys.executable, "-c", PEER_SCRIPT, base, tuned, out], label="modeldelta", log=log)
        M["modeldelta"].update(json.loads(out.read_text()))
    if "rank" in runs:
        warm_cache([base, tuned])
        out = a.out / "ours_rank.result.json"
        M["ours_rank"] = run_measured(ours_cmd(base, tuned, out, ("--rank", a.rank)), label="ours_rank", log=log)
        s = json.loads(out.read_text())["summary"]["rank"]
        M["ours_rank"]["rank"] = {k: s.get(k) for k in ("matrices", "study", "f64")}
    if "geometry" in runs and a.geometry != "off":
        warm_cache([base, tuned])
        out = a.out / "ours_geometry.result.json"
        M["ours_geometry"] = run_measured(ours_cmd(base, tuned, out, ("--rank", a.rank, "--geometry", a.geometry)),
                                          label="ours_geometry", log=log)
        g = json.loads(out.read_text())["summary"]["geometry"]
        M["ours_geometry"]["geometry_matrices"] = g.get("matrices")
    peer = M.get("modeldelta")
    print("\n| method | wall s | CPU s | peak RSS | / modeldelta wall |\n|---|---|---|---|---|")
    for key, label in (("modeldelta", "modeldelta (svdvals of every matrix)"),
                       ("ours_rank", f"ours --rank {a.rank}"),
                       ("ours_geometry", f"ours --rank {a.rank} --geometry {a.geometry}")):
        m = M.get(key)
        if not m:
            continue
        ratio = f"{m['wall_s'] / peer['wall_s']:.2f}x" if peer else "-"
        m["ratio_to_peer"] = m["wall_s"] / peer["wall_s"] if peer else None
        print(f"| {label} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {fmt_bytes(m['peak_rss'])} | {ratio} |")
    for key in ("ours_rank", "ours_geometry"):
        if key in M and M[key]["peak_rss"] > GIB:
            print(f"{key}: peak RSS {fmt_bytes(M[key]['peak_rss'])} is above the 1 GiB target")
    path = a.out / "svd_peers.json"  # a run of some methods keeps the others' last numbers
    kept = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**kept, **M}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
