"""`nlc fmt` and `nlc convert`, the library side: canonical layouts of both forms, idempotent,
with every comment kept, in either form."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlc.errors import NlcError
from nlc.frontend.fmt import convert_file, format_file, read, render
from nlc.frontend.layout import WIDTH

EXAMPLES = Path(__file__).parents[1] / "examples"
SOURCES = sorted(EXAMPLES.glob("**/*.nlc")) + sorted(EXAMPLES.glob("**/*.yaml"))


def _ast(path: Path) -> str:
    return repr(read(path).spec.model_dump(by_alias=True))


def _comments(text: str) -> list[str]:
    return sorted(re.findall(r"#\S*", text))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("**/*.nlc")), ids=lambda p: p.stem)
def test_nlc_examples_are_formatted(path: Path):
    assert not format_file(path, write=False), f"run nlc fmt {path}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_fmt_is_idempotent_and_keeps_meaning_and_comments(path: Path, tmp_path: Path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    format_file(copy)
    assert not format_file(copy, write=False)
    assert _ast(copy) == _ast(path)
    assert _comments(copy.read_text()) == _comments(path.read_text())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_convert_there_and_back(path: Path, tmp_path: Path):
    other = tmp_path / ("other.yaml" if path.suffix == ".nlc" else "other.nlc")
    back = tmp_path / f"back{path.suffix}"
    convert_file(path, other)
    convert_file(other, back)
    assert _ast(other) == _ast(back) == _ast(path)
    assert (
        _comments(other.read_text()) == _comments(back.read_text()) == _comments(path.read_text())
    )
    assert not format_file(back, write=False)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fmt")


_EDIT = st.tuples(st.floats(0, 1), st.sampled_from(["own", "trailing", "blank"]))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SOURCES), st.lists(_EDIT, min_size=1, max_size=6))
def test_comments_anywhere_survive_fmt_and_convert(scratch: Path, source: Path, edits):
    """Comments and blank lines put on random lines stay, in order of appearance per item,
    through `fmt` (which is idempotent) and `convert` to the other form."""
    lines = source.read_text().splitlines()
    for n, (where, kind) in enumerate(edits):
        i = int(where * len(lines))
        if kind == "trailing" and i < len(lines) and lines[i].strip() and "#" not in lines[i]:
            lines[i] += f"  #c{n}"
        elif kind == "blank":
            lines.insert(i, "")
        else:
            indent = re.match(r"\s*", lines[i] if i < len(lines) else "").group()
            lines.insert(i, f"{indent}#c{n}")
    path = scratch / f"spec{source.suffix}"
    path.write_text("\n".join(lines) + "\n")
    before = path.read_text()
    format_file(path)
    assert not format_file(path, write=False)
    assert _ast(path) == _ast(source)
    assert _comments(path.read_text()) == _comments(before)
    other = scratch / ("other.yaml" if source.suffix == ".nlc" else "other.nlc")
    convert_file(path, other)
    assert _ast(other) == _ast(source)
    assert _comments(other.read_text()) == _comments(before)


def test_format_file_writes_unless_checking(tmp_path: Path):
    path = tmp_path / "m.nlc"
    path.write_text("model m {\n\n\n  input x: [B,4]   # the input\n  relu( ) ->gelu()\n}\n")
    assert format_file(path, write=False)
    assert "relu( )" in path.read_text()
    assert format_file(path)
    assert path.read_text() == "model m {\n  input x: [B, 4]  # the input\n  relu() -> gelu()\n}\n"
    assert not format_file(path)


def test_long_lines_break_after_arrows_then_per_attribute(tmp_path: Path):
    args = ", ".join(f"attribute_{i}={i}" for i in range(8))
    path = tmp_path / "m.nlc"
    path.write_text(
        "model m {\n  input x: [B, 4]\n"
        f"  h = x -> relu() -> op({args}) -> gelu() -> op({args[:60]}) as k -> silu()\n}}\n"
    )
    format_file(path)
    text = path.read_text()
    assert max(map(len, text.splitlines())) <= WIDTH
    assert "  h = x -> relu() ->\n      op(\n        attribute_0=0,\n" in text
    assert "      ) ->\n      gelu() ->\n      op(attribute_0=0," in text
    assert not format_file(path)


def test_a_trailing_comment_too_long_for_its_line_goes_above_it(tmp_path: Path):
    path = tmp_path / "m.yaml"
    comment = "# " + "long " * 20
    path.write_text(
        f"nlc: 1\nname: m\ninputs: {{x: {{shape: [B, 4]}}}}\ngraph: [relu]  {comment}\n"
    )
    format_file(path)
    assert f"\n{comment.rstrip()}\ngraph:\n  - relu\n" in path.read_text()
    assert not format_file(path)


def test_chains_stay_as_written_and_conversion_chains_unnamed_ops(tmp_path: Path):
    source = tmp_path / "m.nlc"
    source.write_text(
        "model m {\n  input x: [B, 4]\n  relu()\n  gelu()\n  h = silu() -> tanh()\n}\n"
    )
    assert not format_file(source)
    convert_file(source, tmp_path / "m.yaml")
    convert_file(tmp_path / "m.yaml", tmp_path / "back.nlc")
    assert "  relu() -> gelu() -> silu()\n  h = tanh()\n" in (tmp_path / "back.nlc").read_text()


def test_what_neither_form_can_print_is_a_clean_error(tmp_path: Path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "nlc: 1\nname: m\ninputs: {x: {shape: [B]}}\ngraph: [{op: relu, at: 2024-01-01}]\n"
    )
    with pytest.raises(NlcError, match="2024-01-01 is a date, not a number or text") as e:
        format_file(path)
    assert str(e.value.loc) == f"{path}:4:24"


def test_convert_needs_a_known_suffix(tmp_path: Path):
    with pytest.raises(NlcError, match="cannot tell the format of"):
        convert_file(EXAMPLES / "cnn_digits.yaml", tmp_path / "cnn.txt")


def test_a_file_of_blocks_formats_as_one(tmp_path: Path):
    path = tmp_path / "blocks.nlc"
    path.write_text('# shared\ninclude "more.nlc"\nblock b(c: int) {\n  linear(out=c)\n}\n')
    assert format_file(path)
    assert path.read_text() == (
        '# shared\ninclude "more.nlc"\n\nblock b(c: int) {\n  linear(out=c)\n}\n'
    )
    assert render(read(path), dsl=False) == (
        "# shared\nnlc: 1\ninclude: [more.nlc]\n\nblocks:\n  b:\n    params: {c: int}\n"
        '    graph:\n      - {op: linear, out: "${c}"}\n'
    )
