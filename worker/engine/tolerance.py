"""The tolerance t of "changed iff |delta| > t": one type, validated once, one spelling of its key.

The engine (kernel, analysis), the API schema, the CLI and the store all take a tolerance;
each builds a `Tolerance`, so the rule (a finite number >= 0, -0.0 read as 0.0) lives here
alone. Results key their counts by `tolerance_key(t)`, the shortest repr that round-trips the
float64: "1e-05", "0.0". Content ids hash the same string, so it must never change.

Imports nothing (not even torch): the web process reads it at start-up.
"""

from __future__ import annotations

import math


class Tolerance(float):
    """A float that is a valid tolerance: finite and >= 0 (-0.0 is 0.0). Raises ValueError otherwise,
    also for anything that is not an int or float (a string, a bool): parse text first."""

    __slots__ = ()

    def __new__(cls, value: object) -> Tolerance:
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"The tolerance must be a finite number >= 0, not {value!r}.")
        t = float(value)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"The tolerance must be a finite number >= 0, not {value!r}.")
        return super().__new__(cls, t + 0.0)  # -0.0 + 0.0 is +0.0

    @property
    def key(self) -> str:
        return tolerance_key(self)


def tolerance_key(t: float) -> str:
    """The key of t's counts in a result (and its part of a content id)."""
    return repr(float(t))
