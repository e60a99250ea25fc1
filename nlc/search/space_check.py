"""`nlc check` on a search space: does every point lower to a valid graph?

Small spaces are checked point by point; larger ones with every value of every dim at least
once plus a seeded random sample. A failing point is narrowed to the choices that matter: the
dims where another value (the rest unchanged) makes the graph valid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from nlc.errors import NlcError
from nlc.frontend.lower import lower
from nlc.search.space import Dim, Point, Space


@dataclass
class Failure:
    """One distinct error, how many checked points hit it, and one of them."""

    error: NlcError
    point: Point
    count: int = 1
    culprits: list[Dim] = field(default_factory=list)


@dataclass
class SpaceCheck:
    checked: int
    exhaustive: bool
    sampled: int  # random points among `checked` (the rest cover every value of every dim)
    failures: list[Failure]


def check_space(space: Space, limit: int = 512, samples: int = 64, seed: int = 0) -> SpaceCheck:
    """Lower every point if there are at most `limit`, else a covering set and `samples` more."""
    size = space.size()
    rng = random.Random(seed)
    if size is not None and size <= limit:
        points, sampled = list(space.points()), 0
    else:
        points = cover(space, rng)
        sampled = samples
        points += [space.sample(rng) for _ in range(samples)]
    failures: dict[tuple[str, str], Failure] = {}
    for point in points:
        error = _error(space, point)
        if error is None:
            continue
        key = (error.message, str(error.loc))
        if key in failures:
            failures[key].count += 1
        else:
            failures[key] = Failure(error, point, culprits=_culprits(space, point, rng))
    exhaustive = size is not None and size <= limit
    return SpaceCheck(len(points), exhaustive, sampled, list(failures.values()))


def cover(space: Space, rng: random.Random) -> list[Point]:
    """Points that give every dim each of its values (a continuous float: both bounds)."""
    points = []
    for dim in space.dims:
        values = dim.values() or [dim.low, dim.high]
        for value in values:
            points.append(space.with_value(space.sample(rng), dim, value, rng))
    return points


def _error(space: Space, point: Point) -> NlcError | None:
    try:
        lower(space.spec(point))
    except NlcError as e:
        return e
    return None


def _culprits(space: Space, point: Point, rng: random.Random) -> list[Dim]:
    """The active dims for which another value, all else equal, gives a valid graph."""
    found = []
    for dim in space.active(point):
        values = dim.values() or [dim.low, dim.high]
        for value in values:
            if value == point[dim.name]:
                continue
            if _error(space, space.with_value(point, dim, value, rng)) is None:
                found.append(dim)
                break
    return found
