"""Docs that live in the repository stay true: docs/METRICS.md holds every section of the design's
metrics.md (when the design folder is beside the checkout), and the README's Python example runs
and prints the numbers it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from run_checkpoints import write_run

from worker.demo.synthetic import write_demo

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "docs" / "METRICS.md"
# ../shared/design beside the checkout; a worktree under wt/<name> has it two levels up
DESIGN = next((p / "shared" / "design" / "metrics.md" for p in (ROOT.parent, ROOT.parent.parent)
               if (p / "shared" / "design" / "metrics.md").exists()), None)


def sections(text: str) -> list[str]:
    return re.findall(r"^#{2,3} (.+?)\s*$", text, flags=re.M)


def test_metrics_md_is_in_the_repository_and_pointed_to():
    text = METRICS.read_text()
    assert {"Update and tolerance", "Subnetwork overlap (the study's section 5 and appendix E)"} <= set(sections(text))
    for doc in ("README.md", "docs/CONTRACTS.md"):
        assert "docs/METRICS.md" in (ROOT / doc).read_text() and "shared/design" not in (ROOT / doc).read_text()


@pytest.mark.skipif(DESIGN is None, reason="the design folder (../shared/design) is not beside this checkout")
def test_metrics_md_keeps_every_section_of_the_design():
    ours, design = METRICS.read_text(), DESIGN.read_text()
    missing = [s for s in sections(design) if s not in sections(ours)]
    assert missing == [], f"docs/METRICS.md lacks these sections of {DESIGN}: {missing}"
    # and every row of the study's reference table
    rows = [line for line in design.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r for r in rows if r not in ours] == []


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(import subnetscope\n.*?)```", readme, flags=re.S).group(1)
    demo = write_demo(tmp_path / "demo", trained=False)
    base_dir, run_dir, _ = write_run(tmp_path / "run")
    code = (code.replace("/tmp/demo/trained/base", str(base_dir)).replace("/tmp/demo/trained/rl_run", str(run_dir))
            .replace("/tmp/demo", str(Path(demo["base"]).parent)))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    a = scope["a"]
    shown = re.search(r"a\.sparsity, a\.bit_exact_sparsity, a\.changed\[1e-5\]\s+# ([\d.]+), ([\d.]+), (\d+)",
                      readme)
    assert shown, "the README example shows the numbers it prints"
    assert (f"{a.sparsity:.4f}", f"{a.bit_exact_sparsity:.4f}") == (shown.group(1), shown.group(2))
    assert a.changed[1e-5] == int(shown.group(3))
    assert (tmp_path / "rl_a.html").stat().st_size > 1e6 and scope["run"].checkpoints
