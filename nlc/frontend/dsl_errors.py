"""Syntax errors of `.nlc` files in words: what was found, what may come there and, for common
mistakes (YAML habits, an unclosed bracket, a call without parentheses, ...), what to write.

Common mistakes are recognised by example, as lark's `match_examples` does, but by parser state
and token type alone, so that an example written at the top of a model also matches the same
mistake inside a block.
"""

from __future__ import annotations

import re
from functools import cache

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from nlc.errors import NlcError, SourceLoc, did_you_mean

STATEMENTS = ("input", "output", "block", "include")

# label -> (message, hint, examples that fail the same way); `{prev}` is the token before.
_MISTAKES: dict[str, tuple[str, str, list[str]]] = {
    "start": (
        "unexpected {found}: a spec file starts with `model NAME {{` (a file of shared blocks "
        "with `block` or `include`)",
        "e.g. `model my_net(width=64) {{`, then its statements and a closing `}}`",
        ["nlc: 1", "x", "relu()", "input x: [B]"],
    ),
    "colon_name": (
        "unexpected `=`: a line `name: ...` is a model setting; a node is named with `=`",
        "e.g. `conv1 = conv2d(out=64, kernel=3)`",
        ["model m {\n a: b(c=1)\n}"],
    ),
    "statement": (
        "unexpected {found} after `{prev}`",
        "a statement is `input`, `output`, `block`, `include`, or a node such as `h = x -> relu()`",
        ["model m {\n inputs x: [B]\n}"],
    ),
    "kwarg_colon": (
        "unexpected `:` after `{prev}`: an attribute is set with `=`",
        "e.g. `linear(out=10)`",
        ["model m {\n a(b: 1)\n}"],
    ),
    "positional": (
        "unexpected {found}: op attributes are named, `name=value`",
        "e.g. `linear(out=10)`; an op's inputs come before `->`, as in `(a, b) -> add()`",
        ["model m {\n a(1)\n}", "model m {\n a(b)\n}", "model m {\n a(b, c)\n}"],
    ),
    "call_parens": (
        "expected `(` after `{prev}`: ops are called with parentheses",
        "e.g. `x -> relu()`",
        ["model m {\n x -> relu\n}"],
    ),
    "statement_call": (
        "`{prev}` alone is not a statement: a statement calls an op, with parentheses",
        "e.g. `relu()`, `h = x -> relu()` or `logits = linear(out=10)`; to continue a chain "
        "on the next line, end this line with `->`",
        ["model m {\n relu\n}", "model m {\n h = x\n}"],
    ),
    "missing_arrow": (
        "unexpected {found} after `)`: chain ops with `->`, or start a new line",
        "e.g. `conv2d(out=64, kernel=3) -> relu()`",
        ["model m {\n a() b()\n}", "model m {\n a(b=1) c()\n}", "model m {\n a() as b c()\n}"],
    ),
    "input_colon": (
        "unexpected {found} after input `{prev}`: its type follows `:`",
        "e.g. `input x: f32[B, 3, 32, 32]` (the dtype is optional, f32 by default)",
        ["model m {\n input x = [B]\n}"],
    ),
    "shape": (
        "unexpected {found}: a tensor type is a dtype and a shape in brackets",
        "e.g. `input x: f32[B, 3, 32, 32]` or `input ids: i64[B, T]`",
        ["model m {\n input x: f32(B)\n}", "model m {\n input x: (B)\n}"],
    ),
    "type_after_colon": (
        "unexpected {found}: after `:` comes a type (int, float, bool or str)",
        "give a default with `=`, e.g. `stride=1`, or both, `stride: int = 1`",
        ["model m {\n block b(c: 1) {\n }\n}"],
    ),
    "include_string": (
        "unexpected {found}: the file to include is a string in double quotes",
        'e.g. `include "blocks.nlc"`',
        ["model m {\n include a\n}"],
    ),
    "output_names": (
        "unexpected {found}: `output` lists node names",
        "e.g. `output logits`, or `output a, b[1]` for several",
        ["model m {\n output [a]\n}", 'model m {\n output "a"\n}'],
    ),
    "after_arrow": (
        "unexpected {found}: an op call must follow `->`",
        "e.g. `x -> relu()`",
        ["model m {\n x ->\n}", "model m {\n x -> 1\n}"],
    ),
    "model_name": (
        "unexpected {found}: the model needs a name",
        "e.g. `model my_net(width=64) {{`",
        ["model {\n}", "model (a=1) {\n}"],
    ),
    "block_name": (
        "unexpected {found}: a block needs a name",
        "e.g. `block conv_bn(c: int, stride=1) {{`",
        ["model m {\n block {\n }\n}", "model m {\n block (c: int) {\n }\n}"],
    ),
    "body_open": (
        "unexpected {found}: expected `{{` to open the body",
        "the body opens on the line of its header, e.g. `model my_net(width=64) {{`",
        ["model m\n", "model m(a=1)\n", "model m {\n block b(c: int)\n}", "model m {\n block b\n}"],
    ),
    "after_model": (
        "unexpected {found}: nothing may follow the model's closing `}}`",
        "a file holds one model: put every statement inside its braces",
        ["model m {\n}\nx"],
    ),
}

_CHARACTERS = {
    '"': ("this string is not closed", 'end it with `"` on the same line'),
    "'": ("strings are written in double quotes", 'e.g. `padding="same"`'),
    "$": (
        "unexpected `$`: `${...}` is YAML's way to write an expression",
        "in a .nlc file write the expression itself, e.g. `out=width * 2`",
    ),
    "^": ("unexpected `^`", "powers are written `**`, e.g. `2 ** depth`"),
    "&": ("unexpected `&`", "write `and`"),
    "|": ("unexpected `|`", "write `or`"),
    "!": ("unexpected `!`", "write `not`, or `!=` for 'is not equal to'"),
    ";": ("unexpected `;`", "a statement ends at the end of its line"),
}

_WORDS = {
    "NAME": "a name",
    "INT": "a number",
    "FLOAT": "a number",
    "STRING": "a string",
    "_NL": "a line break",
    "$END": "the end of the file",
}
_VALUE = {"NAME", "INT", "FLOAT", "STRING"}  # where these may come, any value may
_VALUE_STARTS = _VALUE | {"LPAR", "LSQB", "LBRACE", "MINUS", "PLUS", "NOT", "TRUE", "FALSE", "NULL"}
_OPERATORS = {"+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and"}
_OPERATORS |= {"or", "if", "else"}
_BRACKETS = {"(": ")", "[": "]", "{": "}"}
_SCAN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\r\n]*|[()\[\]{}]')


def explain(e: UnexpectedInput, text: str, display: str, recent: list[Token], lark: Lark):
    """The NlcError for lark's `e`; `recent` are the last tokens read (the parser may or may
    not have read the offending one)."""
    at = len(text) if _is_end(e) else e.pos_in_stream
    before = next((t for t in reversed(recent) if t.start_pos < at), None)
    bracket = _bracket_error(text, at, display)
    if bracket is not None:
        return bracket
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream]
        message, hint = _CHARACTERS.get(
            char,
            (
                f"unexpected character {char!r}",
                "names are letters, digits and `_`; text goes in double quotes",
            ),
        )
        return NlcError(message, SourceLoc(display, e.line, e.column), hint)
    if not isinstance(e, UnexpectedToken):  # lark's LALR parser reports the end as a token
        return NlcError("unexpected end of file", _loc(text, display, len(text)))
    tok = e.token
    loc = _loc(text, display, at) if _is_end(e) else SourceLoc(display, tok.line, tok.column)
    prev = str(before) if before is not None else ""
    catalog = _catalog(lark)
    label = catalog.get((e.state.position, tok.type)) or catalog.get((e.state.position, None))
    if label == "start" and re.match(r"\w+[ \t]*:", text[at:]):
        return NlcError(
            "this looks like YAML, not the nlc DSL",
            loc,
            "a YAML spec's file name ends in .yaml; `nlc convert` writes it as .nlc",
        )
    if label is not None:
        message, hint, _ = _MISTAKES[label]
        if label == "statement":
            hint = did_you_mean(prev, STATEMENTS) or hint
        return NlcError(message.format(found=_found(tok), prev=prev), loc, hint.format())
    expected = _expected(e.accepts or e.expected, lark)
    return NlcError(f"unexpected {_found(tok)}; expected {expected}", loc, None)


def _is_end(e: UnexpectedInput) -> bool:
    return isinstance(e, UnexpectedToken) and e.token.type == "$END"


@cache
def _catalog(lark: Lark) -> dict[tuple[int, str | None], str]:
    """(parser state, token type) of each example's error -> its label; (state, None) too, for a
    mistake that other tokens make in the same place."""
    table: dict[tuple[int, str | None], str] = {}
    for label, (_, _, examples) in _MISTAKES.items():
        for example in examples:
            try:
                lark.parse(example, start="start")
            except UnexpectedToken as e:
                table.setdefault((e.state.position, e.token.type), label)
                table.setdefault((e.state.position, None), label)
            else:
                raise AssertionError(f"the example of {label!r} parses: {example!r}")
    return table


def _bracket_error(text: str, at: int, display: str) -> NlcError | None:
    """A stray or unclosed bracket that explains a syntax error at offset `at`.

    Line breaks inside ( ) and [ ] do not end statements, so a missing `)` shows up lines
    later; a missing `}` shows at the end of the file, where the indentation of the braces
    tells which body it belongs to."""
    stack: list[int] = []
    misplaced = None  # the first `{` closed by a `}` indented otherwise
    for m in _SCAN.finditer(text):
        c, here = m.group(), m.start()
        if c in _BRACKETS:
            stack.append(here)
        elif c in ")]}" and stack and _BRACKETS[text[stack[-1]]] == c:
            opened = stack.pop()
            if c == "}" and misplaced is None and _indent(text, opened) != _indent(text, here):
                misplaced = opened
        elif c == "}" and stack:
            return _unclosed(text, stack[-1], here, at, display)
        elif c in ")]}":
            if here != at:
                return None
            what = f"the `{text[stack[-1]]}` before it" if stack else "no bracket before it"
            return NlcError(
                f"unmatched `{c}`: it does not close {what}",
                _loc(text, display, at),
                "remove it, or add the bracket it closes",
            )
    if not stack:
        return None
    return _unclosed(
        text, misplaced if misplaced is not None else stack[-1], len(text), at, display
    )


def _indent(text: str, offset: int) -> int:
    start = text.rfind("\n", 0, offset) + 1
    line = text[start:offset]
    return len(line) - len(line.lstrip())


def _unclosed(text: str, opened: int, noticed: int, at: int, display: str) -> NlcError | None:
    bracket = text[opened]
    spans_lines = text.count("\n", 0, opened) < text.count("\n", 0, at)
    if (
        bracket == "{"
        and at == noticed
        or bracket != "{"
        and opened < at <= noticed
        and spans_lines
    ):
        return NlcError(
            f"`{bracket}` is never closed",
            _loc(text, display, opened),
            f"close it with `{_BRACKETS[bracket]}`"
            + (" (a body ends with `}` on a line of its own)" if bracket == "{" else ""),
        )
    return None


def _loc(text: str, display: str, offset: int) -> SourceLoc:
    offset = min(offset, len(text.rstrip()))
    line = text.count("\n", 0, offset) + 1
    return SourceLoc(display, line, offset - text.rfind("\n", 0, offset))


def _found(tok: Token) -> str:
    """What was found, after "unexpected": `)`, name `x`, end of line."""
    if tok.type in ("$END", "_NL"):
        return "end of file" if tok.type == "$END" else "end of line"
    kind = {"NAME": "name ", "INT": "number ", "FLOAT": "number ", "STRING": "string "}
    return f"{kind.get(tok.type, '')}`{tok}`"


def _expected(names: set[str], lark: Lark) -> str:
    words = []
    if _VALUE <= names:
        words.append("a value (a number, a string, a param or an expression)")
        names = names - _VALUE_STARTS
    operator = False
    for name in sorted(names, key=lambda n: (n in _WORDS, n)):
        word = _WORDS.get(name)
        if word is None:
            pattern = lark.get_terminal(name).pattern.value
            if pattern in _OPERATORS:
                operator = True
                continue
            word = f"`{pattern}`"
        if word not in words:
            words.append(word)
    if operator:
        words.append("an operator")
    return " or ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else words[0]
