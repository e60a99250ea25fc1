"""Broken `.nlc` files get one paragraph, `file:line:col: error: ...` and a hint, exit 2.

The corpus in tests/dsl_errors/ declares what each file must produce in its first lines, as
tests/errors/ does for YAML, and tests/test_errors.py runs both. Here, fuzzing checks that random
bytes, random token soups and random edits of the examples only ever give such errors.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nlc
from nlc.errors import NlcError
from nlc.frontend.fmt import read, render

EXAMPLES = Path(__file__).parents[1] / "examples"


# -- fuzzing: nothing but NlcErrors, in bounded time ------------------------------------------

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=5),  # a hang, not a slow machine
    suppress_health_check=[HealthCheck.too_slow],
)
_TOKENS = [
    "model", "block", "input", "output", "include", "as", "m", "x", "relu", "linear", "(", ")",
    "[", "]", "{", "}", ",", "=", ":", "->", "\n", "1", "2.5", "-", "*", "**", '"s"', "out",
    "f32", "B", "true", "null", "if", "else", "not", "#c", "repeat", "$", "'",
]  # fmt: skip
_SOURCES = [(EXAMPLES / f"{name}.nlc").read_text() for name in ("cnn_digits", "mlp_digits")]
_SOURCES.append((EXAMPLES / "resnet18.nlc").read_text())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "spec.nlc"


def _only_clean_errors(path: Path, data: bytes) -> None:
    """Loading, lowering and formatting `data` either work or raise NlcError; what `nlc fmt`
    prints reads back as the same AST."""
    path.write_bytes(data)
    try:
        nlc.load(path)
    except NlcError:
        pass
    try:
        source = read(path)
        text = render(source, dsl=True)
    except NlcError:
        return
    path.write_text(text)
    again = read(path)
    assert repr(again.spec.model_dump()) == repr(source.spec.model_dump()), text


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(scratch: Path, data: bytes):
    _only_clean_errors(scratch, data)


@FUZZ
@given(st.lists(st.sampled_from(_TOKENS), max_size=40), st.sampled_from([" ", ""]))
def test_random_token_soup(scratch: Path, tokens: list[str], sep: str):
    _only_clean_errors(scratch, sep.join(tokens).encode())


_EDITS = st.tuples(
    st.sampled_from(["delete", "insert", "duplicate"]),
    st.floats(0, 1),
    st.integers(1, 8),
    st.sampled_from(_TOKENS),
)


@FUZZ
@given(st.sampled_from(_SOURCES), st.lists(_EDITS, min_size=1, max_size=4))
def test_random_edits_of_examples(scratch: Path, source: str, edits):
    for kind, where, size, token in edits:
        at = int(where * len(source))
        if kind == "delete":
            source = source[:at] + source[at + size :]
        elif kind == "insert":
            source = source[:at] + token + source[at:]
        else:
            source = source[:at] + source[at : at + size] + source[at:]
    _only_clean_errors(scratch, source.encode())
