"""docs/RELIABILITY.md and this suite stay in step: every test is in the table, every reference exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOC = REPO / "docs" / "RELIABILITY.md"


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def references(text: str) -> set[tuple[str, str]]:
    """(file, test name) for each `file.py::name[...]` in the document."""
    return {(m.group(1), m.group(2)) for m in re.finditer(r"`((?:tests/[\w/]+/)?test_\w+\.py)::(test_\w+)", text)}


def resolve(file: str) -> Path:
    return REPO / file if file.startswith("tests/") else HERE / file


def test_every_reliability_test_is_in_the_table():
    text = DOC.read_text()
    listed = {(file, name) for file, name in references(text) if not file.startswith("tests/")}
    missing = [f"{f.name}::{name}" for f in sorted(HERE.glob("test_*.py")) if f != Path(__file__).resolve()
               for name in sorted(_test_names(f)) if (f.name, name) not in listed]
    assert missing == [], f"tests not in docs/RELIABILITY.md: {missing}"


def test_every_reference_in_the_table_exists():
    dangling = [f"{file}::{name}" for file, name in sorted(references(DOC.read_text()))
                if not resolve(file).is_file() or name not in _test_names(resolve(file))]
    assert dangling == [], f"docs/RELIABILITY.md names tests that do not exist: {dangling}"
