"""What the precision view costs the pass: with and without it, side by side in one run.

    .venv/bin/python bench/precision_cost.py [--size-gb 1.0] [--before REV] [--rounds 5] [--out bench/out]

Three runs of the pass on the bench pair, in fresh processes:
- "view": this tree, as the product runs it;
- "no view": this tree with the engine's `AnalysisOptions(precision=False)`: the same pass without
  the view's histograms, sums and folds (what the issue's budget is about: what the added
  histograms cost the pass);
- "before": the tree at REV (default: the kernel split, the last commit without the precision
  view), unpacked with `git archive` under --out; it also lacks everything else added since.
After one untimed run of each (numba compiles and caches its loops, the pair goes to page cache,
content ids to the digest cache), every round runs the pass once from each, in rotating order.
The pass is analyze() on two opened sources (start-up and content ids excluded), timed in wall
seconds and in CPU seconds of all the process's threads (the CPU time moves less with other load
on a shared machine). Prints the medians and the ratios, writes --out/precision_cost.json; exits 1
when the view costs over 15 % of the pass (median wall, "view" against "no view").
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
options = AnalysisOptions(device="cpu", **json.loads(sys.argv[4]))
with b, u:
    wall, cpu = time.perf_counter(), time.process_time()
    result = analyze(b, u, options)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
json.dump({"wall": wall, "cpu": cpu, "summary": result["summary"]}, open(sys.argv[3], "w"))
"""


def analyze(tree: Path, base: Path, tuned: Path, out_json: Path, options: dict) -> tuple[float, float, dict]:
    """(pass wall seconds, pass CPU seconds, summary) of one run from `tree` with these AnalysisOptions."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", PASS, str(base), str(tuned), str(out_json), json.dumps(options)],
                   cwd=tree, env=env, check=True)
    out = json.loads(out_json.read_text())
    return out["wall"], out["cpu"], out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--before", default=DEFAULT_BEFORE, help="the commit to compare against")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=HERE / "out")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, HERE / "synth.py", str(args.size_gb), args.out], cwd=REPO,
                       stdout=subprocess.PIPE, text=True, check=True)
    pair = json.loads(r.stdout.strip().splitlines()[-1])
    base, tuned = Path(pair["base"]), Path(pair["tuned"])
    runs = {"view": (REPO, {}), "no view": (REPO, {"precision": False}), "before": (unpack(args.before, args.out), {})}
    out_json = args.out / "precision_cost_result.json"
    times: dict[str, dict[str, list[float]]] = {k: {"pass": [], "cpu": []} for k in runs}
    changed = {}
    for name, (tree, options) in runs.items():  # untimed: numba caches, page cache, digest cache
        _, _, result = analyze(tree, base, tuned, out_json, options)
        changed[name] = result["summary"]["changed"]
        if name == "view":
            view_result = result
    assert len({json.dumps(c, sort_keys=True) for c in changed.values()}) == 1, f"the counts differ: {changed}"
    names = list(runs)
    for k in range(args.rounds):
        for name in names[k % 3:] + names[:k % 3]:
            tree, options = runs[name]
            wall, cpu = analyze(tree, base, tuned, out_json, options)[:2]
            times[name]["pass"].append(wall)
            times[name]["cpu"].append(cpu)
            print(f"round {k + 1} {name:8s} pass {wall:6.2f} s wall, {cpu:6.2f} s CPU   load {os.getloadavg()[0]:.1f}",
                  flush=True)
    med = {name: {m: statistics.median(v) for m, v in t.items()} for name, t in times.items()}
    cost = med["view"]["pass"] / med["no view"]["pass"] - 1
    cpu_cost = med["view"]["cpu"] / med["no view"]["cpu"] - 1
    print(f"\nmedian pass, wall / CPU seconds: view {med['view']['pass']:.3f} / {med['view']['cpu']:.3f}, "
          f"no view {med['no view']['pass']:.3f} / {med['no view']['cpu']:.3f}, "
          f"before ({args.before}) {med['before']['pass']:.3f} / {med['before']['cpu']:.3f}")
    print(f"the view costs {100 * cost:+.1f} % of the pass wall, {100 * cpu_cost:+.1f} % CPU (budget {100 * LIMIT:.0f} %)")
    print(f"this tree against {args.before}: {100 * (med['view']['pass'] / med['before']['pass'] - 1):+.1f} % wall, "
          f"{100 * (med['view']['cpu'] / med['before']['cpu'] - 1):+.1f} % CPU (the view and everything else since)")
    s = view_result["summary"]
    (args.out / "precision_cost.json").write_text(json.dumps({
        "size_gb": args.size_gb, "before": args.before, "times": times, "medians": med, "pass_cost": cost,
        "pass_cpu_cost": cpu_cost, "cores": os.cpu_count(), "numel": s["numel"], "loadavg": os.getloadavg()},
        indent=1))
    return 0 if cost <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
