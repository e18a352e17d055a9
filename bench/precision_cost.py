"""What the precision view costs the pass: before and after, on the bench pair, side by side in one run.

    .venv/bin/python bench/precision_cost.py [--size-gb 1.0] [--before REV] [--rounds 3] [--out bench/out]

"before" is the tree at REV (default: the kernel split, the last commit without the precision
view), unpacked with `git archive` under --out; "after" is this tree. After one untimed run of
each (numba compiles and caches its loops, the pair goes to page cache, content ids to the
digest cache), every round runs the pass once from each tree, in fresh processes, in
alternating order. The pass is analyze() on two opened sources (start-up and content ids
excluded), timed in wall seconds and in CPU seconds of all the process's threads (the CPU time
moves less with other load on a shared machine). Prints the medians, the ratios after /
before, and writes --out/precision_cost.json; exits 1 when the wall cost exceeds 15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
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


# The pass alone, in a fresh process of the tree: wall and CPU seconds (all threads) of analyze() on
# sources already opened (their content ids come from the digest cache, outside the timed part).
PASS = """
import json, sys, time
from worker.engine import AnalysisOptions, analyze, open_source, parse_source
b = open_source(parse_source(sys.argv[1], allow_any_path=True))
u = open_source(parse_source(sys.argv[2], allow_any_path=True))
with b, u:
    wall, cpu = time.perf_counter(), time.process_time()
    result = analyze(b, u, AnalysisOptions(device="cpu"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
json.dump({"wall": wall, "cpu": cpu, "summary": result["summary"]}, open(sys.argv[3], "w"))
"""


def analyze(tree: Path, base: Path, tuned: Path, out_json: Path) -> tuple[float, float, dict]:
    """(pass wall seconds, pass CPU seconds, summary) of one run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", PASS, str(base), str(tuned), str(out_json)], cwd=tree, env=env, check=True)
    out = json.loads(out_json.read_text())
    return out["wall"], out["cpu"], out


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
    times: dict[str, dict[str, list[float]]] = {k: {"pass": [], "cpu": []} for k in trees}
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
            wall, cpu, _ = analyze(trees[name], base, tuned, out_json)
            times[name]["pass"].append(wall)
            times[name]["cpu"].append(cpu)
            print(f"round {k + 1} {name:6s} pass {wall:7.2f} s wall, {cpu:7.2f} s CPU   load {os.getloadavg()[0]:.1f}",
                  flush=True)
    med = {name: {m: statistics.median(v) for m, v in t.items()} for name, t in times.items()}
    cost = med["after"]["pass"] / med["before"]["pass"] - 1
    cpu_cost = med["after"]["cpu"] / med["before"]["cpu"] - 1
    print(f"\nmedian pass wall: before {med['before']['pass']:.2f} s, after {med['after']['pass']:.2f} s "
          f"-> cost {100 * cost:+.1f} % of the pass (budget {100 * LIMIT:.0f} %)")
    print(f"median pass CPU:  before {med['before']['cpu']:.2f} s, after {med['after']['cpu']:.2f} s "
          f"-> {100 * cpu_cost:+.1f} % (less sensitive to other load on the machine)")
    s = after_result["summary"]
    (args.out / "precision_cost.json").write_text(json.dumps({
        "size_gb": args.size_gb, "before": args.before, "times": times, "medians": med, "pass_cost": cost,
        "pass_cpu_cost": cpu_cost,
        "cores": os.cpu_count(), "numel": s["numel"], "loadavg": os.getloadavg()}, indent=1))
    return 0 if cost <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
