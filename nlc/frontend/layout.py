"""What the two printers of specs share: the comments and blank lines of a source file, which
printed item each belongs to (for `nlc fmt` and `nlc convert`, in either format), and numbers.

A printer describes what it prints as a tree of units (items with a path into the document:
a param, an input, a block, a graph item, ...). Each comment goes to the unit it sits on
(trailing) or above (leading), judged by the source lines of the units, which both frontends
record in their `Positions`; a comment below the last unit of a body goes before the body's
closing brace (or, in YAML, which has no braces, to the next unit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import yaml

from nlc.frontend.yaml_source import Path_, Positions

WIDTH = 100  # the line length printers aim for, as nlc's Python


@dataclass(frozen=True)
class Comment:
    line: int
    text: str  # from the `#` to the end of the line, trailing spaces removed
    own_line: bool  # nothing but spaces before it on its line
    blank_before: bool  # the line above it is blank


@dataclass
class Layout:
    """What a formatter keeps of a source file besides its document."""

    comments: list[Comment]
    blank: set[int]  # line numbers of blank lines
    ends: dict[Path_, int] = field(default_factory=dict)  # last lines the positions do not show
    chained: set[Path_] | None = None  # DSL items written after `->` (None: the printer decides)


@dataclass
class Unit:
    """An item a printer puts on lines of its own (or starts a line with)."""

    path: Path_
    children: list[Unit] = field(default_factory=list)


@dataclass
class Placed:
    """Where a layout's comments and blank lines go in a printed file."""

    leading: dict[Path_, list[Comment]] = field(default_factory=dict)
    trailing: dict[Path_, str] = field(default_factory=dict)
    footer: dict[Path_, list[Comment]] = field(default_factory=dict)  # before a `}`
    end: list[Comment] = field(default_factory=list)  # after everything
    blank: set[Path_] = field(default_factory=set)  # units right below a blank line
    chained: set[Path_] | None = None

    def above(self, path: Path_) -> list[Comment]:
        return self.leading.get(path, [])


class Writer:
    """Lines of a printed spec, with the source's comments and blank lines put back: what the
    printers of both forms share."""

    def __init__(self, placed: Placed):
        self.placed = placed
        self.lines: list[str] = []

    def text(self) -> str:
        self.comments(self.placed.end, "", first=not self.lines)
        return "\n".join(self.lines) + "\n"

    def blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def comments(self, comments: list[Comment], indent: str, first: bool) -> None:
        """Comment lines, with the blank lines between them (and above, unless `first`)."""
        for k, c in enumerate(comments):
            if c.blank_before and (k or not first):
                self.blank()
            self.lines.append(indent + c.text)

    def above(self, path: Path_, indent: str, first: bool, space: bool = False) -> None:
        """The blank lines and comments above a unit, as in the source; `space` asks for a
        blank line anyway. `first`: the unit opens a body, so no blank line goes above it."""
        comments = self.placed.above(path)
        below_blank = path in self.placed.blank
        if (space or (comments[0].blank_before if comments else below_blank)) and not first:
            self.blank()
        self.comments(comments, indent, first=True)
        if comments and below_blank:
            self.blank()

    def put(self, path: Path_, line: str) -> None:
        """A unit's first line with its trailing comment, which goes above the line instead
        where it would make the line too long."""
        comment = self.placed.trailing.get(path)
        if comment and len(line) + 2 + len(comment) > WIDTH:
            self.lines.append(line[: len(line) - len(line.lstrip())] + comment)
        elif comment:
            line += f"  {comment}"
        self.lines.append(line)


def layout(text: str, starts: Iterable[int]) -> Layout:
    """The blank lines of `text` and its comments, which start at the offsets `starts`."""
    blank = {i + 1 for i, line in enumerate(text.splitlines()) if not line.strip()}
    return Layout([_comment(text, start, blank) for start in starts], blank)


def yaml_layout(text: str) -> Layout:
    """The comments of a YAML file (PyYAML drops them): a `#` at a line's start or after a
    space, outside every scalar."""
    scalars = [
        (t.start_mark.index, t.end_mark.index)
        for t in yaml.scan(text, Loader=yaml.SafeLoader)
        if isinstance(t, yaml.ScalarToken)
    ]
    starts: list[int] = []
    for m in re.finditer(r"(?:^|(?<=[ \t]))#", text, re.M):
        h = m.start()
        in_comment = starts and "\n" not in text[starts[-1] : h]
        if not in_comment and not any(a <= h < b for a, b in scalars):
            starts.append(h)
    return layout(text, starts)


def _comment(text: str, start: int, blank: set[int]) -> Comment:
    line = text.count("\n", 0, start) + 1
    end = text.find("\n", start)
    before = text[text.rfind("\n", 0, start) + 1 : start]
    body = text[start : None if end < 0 else end].rstrip()
    return Comment(line, body, not before.strip(), line - 1 in blank)


def place(layout: Layout, pos: Positions, units: list[Unit], footers: bool) -> Placed:
    """Give each comment of `layout` a unit of `units` (the tree a printer prints, in order).
    `footers`: the printed language closes bodies with a brace that comments can precede."""
    spans = _spans(pos, layout.ends)
    order = list(_walk(units))
    placed = Placed(chained=layout.chained)
    starts: dict[int, Path_] = {}
    for unit in order:
        if unit.path in spans:
            starts.setdefault(spans[unit.path][0], unit.path)
    for c in layout.comments:
        owner = None if c.own_line else starts.get(c.line)
        if owner is not None and owner not in placed.trailing:
            placed.trailing[owner] = c.text
        elif not _lead(c, units, spans, placed, footers):
            placed.end.append(c)
    placed.blank = {
        u.path for u in order if u.path in spans and spans[u.path][0] - 1 in layout.blank
    }
    return placed


def _lead(c: Comment, units: list[Unit], spans, placed: Placed, footers: bool) -> bool:
    """Put an own-line comment above the unit it precedes among `units` (descending into the
    one that encloses it); False if it follows them all."""
    for unit in units:
        span = spans.get(unit.path)
        if span and span[0] < c.line <= span[1]:
            if not unit.children:
                placed.leading.setdefault(unit.path, []).append(c)
                return True
            if _lead(c, unit.children, spans, placed, footers):
                return True
            if footers:
                placed.footer.setdefault(unit.path, []).append(c)
                return True
    later = [u for u in units if u.path in spans and spans[u.path][0] > c.line]
    if not later:
        return False
    target = min(later, key=lambda u: spans[u.path][0])
    placed.leading.setdefault(target.path, []).append(c)
    return True


def _walk(units: list[Unit]) -> Iterator[Unit]:
    for unit in units:
        yield unit
        yield from _walk(unit.children)


def _spans(pos: Positions, ends: dict[Path_, int]) -> dict[Path_, tuple[int, int]]:
    """First and last source line of every path: its own key (or value) starts it; whatever
    lies under it, and a recorded closing bracket, extend it."""
    low: dict[Path_, int] = {}
    high: dict[Path_, int] = {}
    for path, line in [
        *((p, loc.line) for p, loc in pos.values.items()),
        *((p, loc.line) for p, loc in pos.keys.items()),
        *ends.items(),
    ]:
        for i in range(len(path) + 1):
            low[path[:i]] = min(low.get(path[:i], line), line)
            high[path[:i]] = max(high.get(path[:i], line), line)
    own = {
        **{p: loc.line for p, loc in pos.values.items()},
        **{p: loc.line for p, loc in pos.keys.items()},
    }
    return {p: (own.get(p, low[p]), high[p]) for p in low}


def float_text(value: float) -> str | None:
    """The shortest text of a float that both YAML and the DSL read back as that float (YAML
    needs a `.` and a signed exponent): `1.0e-6`, `0.1`, `3.0`; None for inf and nan.

    >>> float_text(1e-06), float_text(2.5), float_text(1e20), float_text(float("inf"))
    ('1.0e-6', '2.5', '1.0e+20', None)
    """
    if not math.isfinite(value):
        return None
    mantissa, _, exponent = repr(value).partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + (f"e{int(exponent):+d}" if exponent else "")
