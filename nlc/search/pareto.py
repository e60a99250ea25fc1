"""Pareto fronts, non-domination ranks, crowding distances and the 2-D hypervolume.

Every function takes objective vectors already turned into minimization (`minimized`)."""

from __future__ import annotations

from collections.abc import Sequence

Vector = tuple[float, ...]


def minimized(values: Sequence[float], directions: Sequence[str]) -> Vector:
    """`values` with maximized objectives negated, so that smaller is better everywhere."""
    return tuple(-v if d == "maximize" else v for v, d in zip(values, directions, strict=True))


def dominates(a: Vector, b: Vector) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def front(points: Sequence[Vector]) -> list[int]:
    """Indices of the non-dominated points (the first of equal points only), in input order."""
    keep = []
    for i, p in enumerate(points):
        if p in points[:i]:
            continue
        if not any(dominates(q, p) for q in points):
            keep.append(i)
    return keep


def ranks(points: Sequence[Vector]) -> list[int]:
    """Non-domination rank of each point: 0 for the front, 1 for the front without it, ..."""
    rank = [-1] * len(points)
    left = set(range(len(points)))
    level = 0
    while left:
        layer = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in layer:
            rank[i] = level
        left -= layer
        level += 1
    return rank


def crowding(points: Sequence[Vector]) -> list[float]:
    """NSGA-II crowding distance of each point among `points` (boundary points: infinite)."""
    n = len(points)
    distance = [0.0] * n
    if n == 0:
        return distance
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = float("inf")
        if high == low:
            continue
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            distance[i] += (points[b][k] - points[a][k]) / (high - low)
    return distance


def hypervolume(points: Sequence[Vector], reference: Vector) -> float:
    """The exact area dominated by `points` and bounded by `reference` (1 or 2 objectives);
    points not strictly better than the reference in every objective add nothing."""
    inside = [p for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    if not inside:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in inside)
    if len(reference) != 2:
        raise ValueError("hypervolume: only 1 or 2 objectives")
    area, best_y = 0.0, reference[1]
    for x, y in sorted(inside):
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
