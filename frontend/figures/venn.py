"""Geometry of area-proportional Venn diagrams (pure math, no plotting).

Two sets: circle areas equal the set sizes and the lens area equals the
intersection, solved by bisection (the lens area falls monotonically with the
centre distance). Three sets: every pair's distance is solved the same way and
the circles are placed by those distances; three circles cannot show seven
arbitrary areas, so only set and pairwise areas are exact, and the figure labels
every region with its exact count instead.
"""

from __future__ import annotations

import math

import numpy as np


def lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two circles with radii r1, r2 at distance d."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = r1 * r1 * math.acos(max(-1.0, min(1.0, (d * d + r1 * r1 - r2 * r2) / (2 * d * r1))))
    a2 = r2 * r2 * math.acos(max(-1.0, min(1.0, (d * d + r2 * r2 - r1 * r1) / (2 * d * r2))))
    k = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
    return a1 + a2 - 0.5 * math.sqrt(max(k, 0.0))


def distance_for_overlap(r1: float, r2: float, overlap: float, iters: int = 100) -> float:
    """Centre distance at which two circles intersect in exactly `overlap` area."""
    lo, hi = abs(r1 - r2), r1 + r2
    if overlap <= 0:
        return hi
    if overlap >= math.pi * min(r1, r2) ** 2:
        return lo
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if lens_area(r1, r2, mid) > overlap:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def radius(area: float) -> float:
    return math.sqrt(max(area, 0.0) / math.pi)


def layout2(a: float, b: float, both: float) -> list[tuple[float, float, float]]:
    """[(x, y, r), (x, y, r)] with areas a, b and lens area `both` (areas in any unit)."""
    scale = max(a, b, 1e-300)
    ra, rb = radius(a / scale), radius(b / scale)
    d = distance_for_overlap(ra, rb, both / scale)
    return [(0.0, 0.0, ra), (d, 0.0, rb)]


def layout3(sizes: tuple[float, float, float], pairs: tuple[float, float, float]
            ) -> list[tuple[float, float, float]]:
    """Circles for sets A, B, C with areas `sizes` and pairwise intersections
    `pairs` = (|A&B|, |A&C|, |B&C|): exact pairwise lens areas whenever the
    three distances form a triangle, else the closest placement that does."""
    scale = max(max(sizes), 1e-300)
    r = [radius(s / scale) for s in sizes]
    dab = distance_for_overlap(r[0], r[1], pairs[0] / scale)
    dac = distance_for_overlap(r[0], r[2], pairs[1] / scale)
    dbc = distance_for_overlap(r[1], r[2], pairs[2] / scale)
    # Triangle inequality: clamp dac into the range B's position allows.
    dac = min(max(dac, abs(dab - dbc)), dab + dbc)
    if dab == 0:
        cx, cy = dac, 0.0
    else:
        cx = (dab * dab + dac * dac - dbc * dbc) / (2 * dab)
        cy = -math.sqrt(max(dac * dac - cx * cx, 0.0))
    return [(0.0, 0.0, r[0]), (dab, 0.0, r[1]), (cx, cy, r[2])]


def region_label_points(circles: list[tuple[float, float, float]], grid: int = 240
                        ) -> dict[str, tuple[float, float, float] | None]:
    """(x, y, clearance) of a point well inside each region, keyed like the overlap
    schema's venn ("100", "110", ...): the grid sample farthest from any circle
    boundary. None when the region has no visible area in this placement."""
    xs = [c[0] for c in circles]
    ys = [c[1] for c in circles]
    rs = [c[2] for c in circles]
    x0, x1 = min(x - r for x, r in zip(xs, rs)), max(x + r for x, r in zip(xs, rs))
    y0, y1 = min(y - r for y, r in zip(ys, rs)), max(y + r for y, r in zip(ys, rs))
    gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    dist = [np.hypot(gx - x, gy - y) - r for x, y, r in circles]  # < 0 inside
    inside = [d < 0 for d in dist]
    margin = np.min(np.abs(np.stack(dist)), axis=0)
    out: dict[str, tuple[float, float, float] | None] = {}
    n = len(circles)
    for code in range(1, 2 ** n):
        key = "".join("1" if code >> (n - 1 - i) & 1 else "0" for i in range(n))
        mask = np.ones_like(gx, dtype=bool)
        for i, bit in enumerate(key):
            mask &= inside[i] if bit == "1" else ~inside[i]
        if not mask.any():
            out[key] = None
            continue
        m = np.where(mask, margin, -1.0)
        j = int(np.argmax(m))
        out[key] = (float(gx.flat[j]), float(gy.flat[j]), float(m.flat[j]))
    return out
