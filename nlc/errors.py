"""Errors that reach users: one paragraph, a source position, and a hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """A position in a spec file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class NlcError(Exception):
    """An error in user input (spec, option, file). The CLI prints `render()` and exits 2."""

    def __init__(self, message: str, loc: SourceLoc | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint

    def render(self) -> str:
        """`file:line:col: error: message` and an indented hint line; one paragraph even if a
        message quotes text with line breaks."""
        where = f"{self.loc}: " if self.loc else ""
        text = f"{where}error: {_one_line(self.message)}"
        if self.hint:
            text += f"\n  hint: {_one_line(self.hint)}"
        return text

    def __str__(self) -> str:
        return self.render()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None when nothing is close.

    >>> did_you_mean("lineer", ["conv2d", "linear"])
    "did you mean 'linear'?"
    """
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"


def mention(what: str, loc: SourceLoc | None, here: SourceLoc | None) -> str:
    """` (what <loc>)` for a message reported at `here`, naming the file only if it differs;
    empty when `loc` is unknown.

    >>> mention("first at", SourceLoc("a.yaml", 7, 3), SourceLoc("a.yaml", 9, 5))
    ' (first at line 7, column 3)'
    """
    if loc is None:
        return ""
    if here is not None and here.file == loc.file:
        return f" ({what} line {loc.line}, column {loc.col})"
    return f" ({what} {loc})"
