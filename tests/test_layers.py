"""The tree's layers, checked on every import statement (docs/ARCHITECTURE.md).

- no import circle between modules of `app`, `worker` and `frontend` (lazy imports inside
  functions count too: a circle hidden in a function is still a circle);
- the engine (`worker/engine/`) imports nothing of `app`, `frontend` or the rest of `worker`;
- `worker/` imports nothing of `app` but `app.core`;
- `app.core` imports nothing of `app.web`, `app.cli` or `frontend`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "frontend", "subnetscope")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else []:
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that `name` (a module or a name inside one) names."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` runs pkg/__init__ first, but that is the parent-package edge
            # every module has; the import itself is an edge to `sub` when it is a module.
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in PACKAGES:
                hit = _resolve(t)
                if hit and hit != module:
                    out.add(hit)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _parents(module: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: those edges are real too."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} & MODULES.keys()


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # A package importing its own submodules (re-exports) is not a circle unless a
            # submodule imports the package back, which shows up as a longer component anyway.
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10_000)
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_tree():
    # A test that cannot fail is a defect: make sure the graph is the real one.
    assert "worker.engine.analysis" in MODULES and "app.core.settings" in MODULES
    assert "worker.engine.kernel.geometry" in GRAPH["worker.engine.analysis"] or any(
        m.startswith("worker.engine.kernel") for m in GRAPH["worker.engine.analysis"])


def test_no_import_circles():
    cycles = []
    for comp in _cycles():
        # package __init__ re-exporting a submodule that imports a sibling through the package
        # path is still a circle; list it.
        cycles.append(" -> ".join(comp))
    assert cycles == [], "import circles:\n" + "\n".join(cycles)


def _violations(source_prefix: str, allowed) -> list[str]:
    bad = []
    for m, deps in GRAPH.items():
        if m == source_prefix or m.startswith(source_prefix + "."):
            bad += [f"{m} -> {d}" for d in sorted(deps) if not allowed(d)]
    return bad


def test_engine_imports_only_itself():
    bad = _violations("worker.engine", lambda d: d == "worker.engine" or d.startswith("worker.engine."))
    assert bad == []


def test_worker_imports_only_app_core():
    bad = _violations("worker", lambda d: not d.startswith(("app.", "frontend")) or d.startswith("app.core"))
    bad = [b for b in bad if not b.endswith(" -> app")]
    assert bad == []


def test_core_is_the_bottom_of_app():
    bad = _violations("app.core", lambda d: not d.startswith(("app.web", "app.cli", "frontend", "subnetscope")))
    assert bad == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_readable(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= 500, f"{module} has {lines} lines; split it by what it holds"


def test_every_module_is_on_the_architecture_page():
    """docs/ARCHITECTURE.md lists every module (package markers that hold only a docstring aside)."""
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()

    def holds_code(path: Path) -> bool:
        body = ast.parse(path.read_text()).body
        return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)

    missing = [str(p.relative_to(ROOT)) for p in MODULES.values()
               if holds_code(p) and f"`{p.relative_to(ROOT).as_posix()}`" not in page]
    assert missing == [], "add these to docs/ARCHITECTURE.md: " + ", ".join(missing)
