"""The choice markers of a search space: how they are recognised and checked, one dimension each.

`{choice: [a, b]}`, `{int: [lo, hi], step: s, log: true}` and `{float: [lo, hi], ...}` stand
where a value would be; `optional: true` and `independent: true` are flags of a graph item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from nlc.errors import NlcError, SourceLoc, did_you_mean
from nlc.frontend.yaml_source import Path_, Positions

KINDS = ("choice", "int", "float")
ITEM_FLAGS = ("optional", "independent")
_OPTIONS = {"choice": (), "int": ("step", "log"), "float": ("step", "log")}
_SCALARS = (int, float, bool, str)


@dataclass(frozen=True)
class Dim:
    """One dimension of a search space (see `nlc.search.space`)."""

    name: str
    kind: Literal["choice", "int", "float"]
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    loc: SourceLoc | None = None
    parent: str | None = None
    when: tuple[Any, ...] = ()

    def values(self) -> list[Any] | None:
        """Every value in order, or None for a continuous float."""
        if self.kind == "choice":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = round((self.high - self.low) / self.step)
        return [_clean(self.low + i * self.step) for i in range(n + 1)]

    def describe(self) -> str:
        """The values in words: `32, 64, 96`, `2..8 step 2`, `0.0001..0.01 log`."""
        if self.kind == "choice":
            return ", ".join(map(_show, self.choices))
        step = self.step if self.step and self.step != 1 else None
        extra = (f" step {_show(step)}" if step else "") + (" log" if self.log else "")
        return f"{_show(self.low)}..{_show(self.high)}{extra}"

    def describe_when(self) -> str:
        """The parent values under which the dim exists: `2, 3`, `true`."""
        return ", ".join(map(_show, self.when))


def _clean(x: float) -> float:
    return float(f"{x:.12g}")


def _show(v: Any) -> str:
    return "true" if v is True else "false" if v is False else str(v)


def kind_of(value: Any) -> str | None:
    """The marker kind of `value` (`choice`, `int` or `float`), or None if it is not a marker.

    >>> kind_of({"choice": [1, 2]}), kind_of({"int": [2, 8], "step": 2}), kind_of({"int": 3})
    ('choice', 'int', None)
    """
    if not isinstance(value, dict):
        return None
    kinds = [k for k in KINDS if isinstance(value.get(k), list)]
    return kinds[0] if kinds else None


def first_marker(data: Any, path: Path_ = ()) -> Path_ | None:
    """The path of the first marker or item flag in a document, or None for a plain spec."""
    if kind_of(data):
        return path
    if isinstance(data, dict):
        if "op" in data:
            for flag in ITEM_FLAGS:
                if flag in data:
                    return (*path, flag)
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)  # type: ignore[assignment]
    else:
        return None
    for k, v in items:
        found = first_marker(v, (*path, k))
        if found is not None:
            return found
    return None


def make_dim(
    marker: dict[str, Any],
    name: str,
    path: Path_,
    pos: Positions,
    parent: str | None,
    when: tuple[Any, ...],
) -> Dim:
    """The dimension a marker at `path` describes; an NlcError at the marker if it is bad."""
    kind = kind_of(marker)
    assert kind is not None
    loc = pos.value(path)
    for key in marker:
        if key != kind and key not in _OPTIONS[kind]:
            allowed = ", ".join((kind, *_OPTIONS[kind]))
            raise NlcError(
                f"unknown key {key!r} in {'an' if kind == 'int' else 'a'} {kind} marker",
                pos.key((*path, key)),
                did_you_mean(key, [kind, *_OPTIONS[kind]]) or f"a {kind} marker has {allowed}",
            )
    values = marker[kind]
    vloc = pos.value((*path, kind))
    for i, v in enumerate(values):
        if kind_of(v) or not isinstance(v, _SCALARS):
            raise NlcError(
                f"{kind} values must be numbers, true/false or text, got {v!r}",
                pos.value((*path, kind, i)),
                "markers do not nest; list plain values, e.g. {choice: [32, 64]}",
            )
    if kind == "choice":
        if not values:
            raise NlcError(
                "empty choice: a choice needs at least one value",
                vloc,
                "list the values to search, e.g. {choice: [32, 64, 96]}",
            )
        for i, v in enumerate(values):
            if any(_same(v, w) for w in values[:i]):
                raise NlcError(
                    f"choice value {v!r} is listed twice", pos.value((*path, kind, i)), "drop one"
                )
        return Dim(name, "choice", tuple(values), loc=loc, parent=parent, when=when)
    return _range_dim(kind, marker, name, path, pos, parent, when)


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def _number(v: Any) -> Any:
    """`v` as a float if it is text that reads as one (`1e-4`), else `v`."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _range_dim(kind, marker, name, path, pos, parent, when) -> Dim:
    values, loc, vloc = marker[kind], pos.value(path), pos.value((*path, kind))
    if kind == "float":  # YAML 1.1 reads 1e-4 (no dot) as text
        values = [_number(v) for v in values]
    number = (int,) if kind == "int" else (int, float)
    example = "{int: [2, 8], step: 2}" if kind == "int" else "{float: [1e-4, 1e-2], log: true}"
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, number) for v in values):
        noun = "integers" if kind == "int" else "numbers"
        raise NlcError(
            f"{kind} range must be two {noun} [low, high], got {values!r}", vloc, f"e.g. {example}"
        )
    low, high = values
    if low > high:
        raise NlcError(
            f"{kind} range [{low}, {high}]: low is greater than high",
            vloc,
            f"write the bounds in order: [{high}, {low}]",
        )
    step, log = marker.get("step"), marker.get("log", False)
    if kind == "float":
        step = _number(step)
    if not isinstance(log, bool):
        raise NlcError(
            f"log must be true or false, got {log!r}", pos.value((*path, "log")), "e.g. log: true"
        )
    if log and low <= 0:
        raise NlcError(
            f"a log range needs a positive low bound, got {low}",
            vloc,
            "use a low bound above 0, or drop `log: true`",
        )
    if step is not None:
        sloc = pos.value((*path, "step"))
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise NlcError(
                f"step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}",
                sloc,
                f"e.g. {example}",
            )
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9:
            raise NlcError(
                f"step {step} does not divide the range [{low}, {high}]",
                sloc,
                f"make high - low a multiple of it, e.g. [{low}, {low + step * math.floor(n)}]",
            )
        if log and (kind == "float" or step != 1):
            raise NlcError(
                "a log range cannot have a step", sloc, "drop either `step` or `log: true`"
            )
    if kind == "int":
        step = step or 1
    return Dim(name, kind, (), low, high, step, log, loc, parent, when)
