"""Golden tests: the printed IR and the emitted modules of the examples, byte for byte.

After an intended change of the output, rewrite the files with `pytest --update-golden`
and review the diff of `tests/golden/` like any other code change.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

import pytest

import nlc
from nlc.emit.package import package_files
from nlc.ir.printer import format_graph

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

CASES = [
    ("cnn_digits", "ir.txt"),
    ("cnn_digits", "model.py"),
    ("cnn_digits", "layers.py"),
    ("resnet18", "ir.txt"),
    ("resnet18", "model.py"),
    ("resnet18", "layers.py"),
    # Attention, PositionalEmbedding and a tied LM head.
    ("gpt2_small", "model.py"),
    ("gpt2_small", "layers.py"),
    # The training scripts: a classifier on digits, and a BPE language model (a pipeline file).
    ("cnn_digits", "train.py"),
    ("cnn_digits", "data.py"),
    ("pipelines/gpt_text", "train.py"),
    ("pipelines/gpt_text", "data.py"),
    ("pipelines/gpt_text", "generate.py"),
]


@cache
def _outputs(example: str) -> dict[str, str]:
    spec, graph = nlc.load(ROOT / "examples" / f"{example}.yaml")
    files = package_files(graph, spec)
    modules = {path.split("/", 1)[1]: text for path, text in files.items() if path.endswith(".py")}
    return {"ir.txt": format_graph(graph), **modules}  # ir.txt: what `nlc ir` prints


@pytest.mark.parametrize(("example", "artefact"), CASES)
def test_matches_golden(example: str, artefact: str, update_golden: bool):
    actual = _outputs(example)[artefact]
    path = GOLDEN / example / artefact
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.is_file(), f"{path} is missing: run `pytest --update-golden` to create it"
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            f"golden/{example}/{artefact}",
            "now",
        )
        pytest.fail(
            "output differs from the golden file (if intended: pytest --update-golden):\n"
            + "".join(diff),
            pytrace=False,
        )
