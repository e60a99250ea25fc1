"""Errors that reach users: one paragraph, a source position, and a hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


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

    def render(self, excerpt: bool = False) -> str:
        """`file:line:col: error: message` and an indented hint line; one paragraph even if a
        message quotes text with line breaks. With `excerpt`, the source line and a caret under
        the column come between them (when the file can be read)."""
        where = f"{self.loc}: " if self.loc else ""
        text = f"{where}error: {_one_line(self.message)}"
        if excerpt and self.loc:
            text += _excerpt(self.loc)
        if self.hint:
            text += f"\n  hint: {_one_line(self.hint)}"
        return text

    def __str__(self) -> str:
        return self.render()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _excerpt(loc: SourceLoc) -> str:
    """The line `loc` points into, and a caret under its column; empty if unreadable."""
    try:
        lines = Path(loc.file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    if not 1 <= loc.line <= len(lines):
        return ""
    line = lines[loc.line - 1].rstrip()
    # Keep tabs under tabs so the caret lines up however the terminal expands them.
    pad = "".join(c if c == "\t" else " " for c in line[: loc.col - 1])
    number = str(loc.line)
    return f"\n  {number} | {line}\n  {' ' * len(number)} | {pad}^"


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
