"""What the precision view costs the pass: before and after, on the bench pair, side by side in one run.

    .venv/bin/python bench/precision_cost.py [--size-gb 1.0] [--before REV] [--rounds 3] [--out bench/out]

"before" is the tree at REV (default: the kernel split, the last commit without the precision
view), unpacked with `git archive` under --out; "after" is this tree. After one untimed run of
each (numba compiles and caches its loops, the pair goes to page cache, content ids to the
digest cache), every round runs `subnetscope analyze BASE TUNED --json FILE --quiet` once from
each tree, in fresh processes, in alternating order. The pass is the result's summary.seconds
(the engine's wall time, start-up and content ids excluded); the whole process's wall time is
reported too. Prints the medians, the ratio after / before, and writes --out/precision_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BEFORE = "9fecd94"  # "Kernel split: ..." (the precision view came after it)
LIMIT = 0.15  # the budget: the histograms may cost at most 15 % of the pass


def unpack(rev: str, out: Path) -> Path:
    sha = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    tree = out / f"before-{sha[:12]}"
    if not (tree / "worker").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=REPO, capture_output=True, check=True)
        tar_path = out / f"before-{sha[:12]}.tar"
        tar_path.write_bytes(archive.stdout)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tree, filter="data")
        tar_path.unlink()
    return tree


def analyze(tree: Path, base: Path, tuned: Path, out_json: Path) -> tuple[float, float, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())", "analyze",
                    str(base), str(tuned), "--json", str(out_json), "--quiet"], cwd=tree, env=env, check=True)
    wall = time.perf_counter() - started
    result = json.loads(out_json.read_text())
    return result["summary"]["seconds"], wall, result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--before", default=DEFAULT_BEFORE, help="the commit to compare against")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "out")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, HERE / "synth.py", str(args.size_gb), args.out], cwd=REPO,
                       stdout=subprocess.PIPE, text=True, check=True)
    pair = json.loads(r.stdout.strip().splitlines()[-1])
    base, tuned = Path(pair["base"]), Path(pair["tuned"])
    trees = {"before": unpack(args.before, args.out), "after": REPO}
    out_json = args.out / "precision_cost_result.json"
    times: dict[str, dict[str, list[float]]] = {k: {"pass": [], "wall": []} for k in trees}
    for name, tree in trees.items():  # untimed: numba caches, page cache, digest cache
        _, _, result = analyze(tree, base, tuned, out_json)
        if name == "after":
            after_result = result
        else:
            before_changed = result["summary"]["changed"]
    assert after_result["summary"]["changed"] == before_changed, "the counts changed"
    for k in range(args.rounds):
        order = list(trees) if k % 2 == 0 else list(trees)[::-1]
        for name in order:
            seconds, wall, _ = analyze(trees[name], base, tuned, out_json)
            times[name]["pass"].append(seconds)
            times[name]["wall"].append(wall)
            print(f"round {k + 1} {name:6s} pass {seconds:7.2f} s   whole run {wall:7.2f} s", flush=True)
    med = {name: {m: statistics.median(v) for m, v in t.items()} for name, t in times.items()}
    cost = med["after"]["pass"] / med["before"]["pass"] - 1
    print(f"\nmedian pass: before {med['before']['pass']:.2f} s, after {med['after']['pass']:.2f} s "
          f"-> cost {100 * cost:+.1f} % of the pass (budget {100 * LIMIT:.0f} %)")
    print(f"median whole run: before {med['before']['wall']:.2f} s, after {med['after']['wall']:.2f} s "
          f"({100 * (med['after']['wall'] / med['before']['wall'] - 1):+.1f} %)")
    s = after_result["summary"]
    (args.out / "precision_cost.json").write_text(json.dumps({
        "size_gb": args.size_gb, "before": args.before, "times": times, "medians": med, "pass_cost": cost,
        "cores": os.cpu_count(), "numel": s["numel"], "loadavg": os.getloadavg()}, indent=1))
    return 0 if cost <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
