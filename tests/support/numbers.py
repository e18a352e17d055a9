"""One structural comparison of result documents, for tests that check two paths give the same numbers."""

from __future__ import annotations

import math


def assert_same_numbers(a, b, path: str = "result", *, rel_tol: float = 1e-12) -> None:
    """Equal structure; floats equal to `rel_tol` relative (0: to the bit), NaN equal to NaN.

    The default slack only absorbs JSON round trips, which are exact in practice."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_numbers(a[k], b[k], f"{path}.{k}", rel_tol=rel_tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]", rel_tol=rel_tol)
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0) or (math.isnan(a) and math.isnan(b)), \
            f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
