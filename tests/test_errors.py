"""Every bad spec, option or file gets one paragraph: `file:line:col: error: ...`, a hint, exit 2.

The corpus in tests/errors/ declares what each broken spec must produce in its first lines:

    # args: --set widht=64        (optional) extra arguments to `nlc check`
    # expect: 7:10: unknown op    where the error points, and a substring of the message;
                                  `inc/b.yaml:2:11: ...` when it points into another file
    # hint: did you mean          (optional) a substring of the hint, which must then be present
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nlc.cli import app

CORPUS = Path(__file__).parent / "errors"  # broken YAML specs
DSL_CORPUS = Path(__file__).parent / "dsl_errors"  # broken .nlc specs
EXAMPLE = Path(__file__).parents[1] / "examples" / "cnn_digits.yaml"
_EXPECT = re.compile(r"(?:(?P<file>\S+\.(?:yaml|nlc)):)?(?P<line>\d+):(?P<col>\d+): (?P<text>.+)")


def _header(path: Path) -> dict[str, str]:
    """The `# key: value` lines at the top of a corpus file."""
    fields = {}
    for line in path.read_text().splitlines():
        m = re.match(r"# (args|command|expect|hint): (.*)", line)
        if not m:
            break
        fields[m.group(1)] = m.group(2)
    return fields


def _nlc(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _assert_user_error(code: int, stdout: str, stderr: str) -> None:
    """Exit 2, nothing on stdout, one paragraph (message, source line with a caret, hint), no
    traceback."""
    assert code == 2, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    lines = stderr.rstrip("\n").splitlines()
    assert "error: " in lines[0], stderr
    rest = lines[1:]
    if rest and re.match(r"  \d+ \| ", rest[0]):
        assert re.fullmatch(r"  \s+\| [ \t]*\^", rest[1]), stderr
        rest = rest[2:]
    assert len(rest) <= 1 and all(line.startswith("  hint: ") for line in rest), stderr


CASES = sorted(CORPUS.glob("*.yaml")) + sorted(DSL_CORPUS.glob("*.nlc"))


def test_corpus_is_large_and_declared():
    assert len(list(CORPUS.glob("*.yaml"))) >= 30 and len(list(DSL_CORPUS.glob("*.nlc"))) >= 30
    for path in CASES:
        assert _EXPECT.fullmatch(_header(path).get("expect", "")), f"{path.name}: bad # expect"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_corpus(path: Path, monkeypatch):
    head = _header(path)
    want = _EXPECT.fullmatch(head["expect"])
    monkeypatch.chdir(path.parent)  # so that messages name files as the headers do
    command = head.get("command", "check")  # errors found only by `build` say so
    code, stdout, stderr = _nlc(command, path.name, *shlex.split(head.get("args", "")))
    _assert_user_error(code, stdout, stderr)
    where = f"{want['file'] or path.name}:{want['line']}:{want['col']}: error: "
    assert stderr.startswith(where), f"expected {where!r}, got:\n{stderr}"
    assert want["text"] in stderr.splitlines()[0]
    if "hint" in head:
        assert "\n  hint: " in stderr and head["hint"] in stderr.split("\n  hint: ")[1], stderr


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["check", "missing.yaml"], "spec file missing.yaml does not exist", "check the path"),
        (["check", "."], ". is a folder, not a spec file", "pass a .nlc or .yaml file"),
        (["check", str(EXAMPLE), "--set", "width"], "is not of the form name=value", "--set"),
        (["check", str(EXAMPLE), "--set", "=3"], "is not of the form name=value", "--set"),
        (["check", str(EXAMPLE), "--set", "width=[1, 2]"], "must be a number", "--set width"),
        (["check", str(EXAMPLE), "--dim", "B=0"], "must be a positive integer", "--dim B=128"),
        (["check", str(EXAMPLE), "--dim", "B"], "is not of the form name=value", "--dim"),
    ],
    ids=["missing", "folder", "set-no-eq", "set-no-key", "set-list", "dim-zero", "dim-no-eq"],
)
def test_bad_options_and_files(args, message, hint, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = _nlc(*args)
    _assert_user_error(code, stdout, stderr)
    assert message in stderr and "hint: " in stderr and hint in stderr.split("hint: ")[1]


def test_binary_file(tmp_path):
    spec = tmp_path / "model.yaml"
    spec.write_bytes(b"nlc: 1\nname: \xff\xfe\n")
    code, stdout, stderr = _nlc("check", str(spec))
    _assert_user_error(code, stdout, stderr)
    assert "is not UTF-8 text" in stderr and "save the spec as UTF-8" in stderr


def test_file_system_refusal_is_reported_without_traceback(tmp_path, monkeypatch):
    def refuse(*args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "pkg"))

    monkeypatch.setattr("nlc.emit.write_package", refuse)
    code, stdout, stderr = _nlc("build", str(EXAMPLE), "-o", str(tmp_path / "pkg"))
    _assert_user_error(code, stdout, stderr)
    assert f"error: Permission denied: {tmp_path / 'pkg'}" in stderr and "permissions" in stderr


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_failed_build_leaves_nothing_behind(tmp_path):
    out = tmp_path / "pkg"
    code, stdout, stderr = _nlc("build", str(CORPUS / "unknown_op.yaml"), "-o", str(out))
    _assert_user_error(code, stdout, stderr)
    assert _entries(tmp_path) == set()


def test_failed_rebuild_keeps_the_previous_build(tmp_path):
    out = tmp_path / "pkg"
    assert _nlc("build", str(EXAMPLE), "-o", str(out))[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, stdout, stderr = _nlc("build", str(EXAMPLE), "-o", str(out), "--set", "width=0")
    _assert_user_error(code, stdout, stderr)
    assert "must be greater than 0" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _entries(tmp_path) == {"pkg"}  # no temporary folder left


def test_build_refuses_to_replace_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, stdout, stderr = _nlc("build", str(EXAMPLE), "-o", str(out))
    _assert_user_error(code, stdout, stderr)
    assert "is not an nlc build" in stderr
    assert _entries(out) == {"notes.txt"} and _entries(tmp_path) == {"mine"}


def test_message_shows_the_source_line_with_a_caret(monkeypatch):
    monkeypatch.chdir(CORPUS)
    _, _, stderr = _nlc("check", "unknown_op.yaml")
    assert stderr.splitlines()[1:3] == [
        "  7 |   - {op: conv2, out: 8, kernel: 3}",
        "    |          ^",
    ]
