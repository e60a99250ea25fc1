"""The `.nlc` frontend: the examples in both forms build the same packages, random specs survive
a trip through either printer and parser, and the generated reference documents are current."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import example_specs
import pytest
import yaml
from example_specs import EXAMPLES
from hypothesis import given, settings
from strategies import Case, any_specs

import nlc
from nlc.emit.package import package_files
from nlc.errors import NlcError
from nlc.frontend.ast import IncludeSpec, ModelSpec
from nlc.frontend.dsl import parse_dsl
from nlc.frontend.dsl_format import format_dsl
from nlc.frontend.fmt import read, render
from nlc.frontend.load import validate
from nlc.frontend.reference import render_reference, schema, schema_text
from nlc.frontend.yaml_format import format_yaml
from nlc.frontend.yaml_source import Positions
from nlc.ops import REGISTRY

ROOT = Path(__file__).parents[1]
NAMES = example_specs.ALL
ROUND_TRIPS = settings(max_examples=60, deadline=None)


def _ast(doc: dict[str, Any], model: type = ModelSpec):
    return validate(model, doc, Positions("spec.yaml"))


def _dump(spec) -> str:
    """The AST as text that tells 1 from 1.0 and True, and keeps the order of mappings."""
    return repr(spec.model_dump(by_alias=True))


def _via_dsl(spec):
    text = format_dsl(spec)
    parsed = parse_dsl(text, "spec.nlc")
    again = validate(type(spec), parsed.doc, parsed.pos)
    assert _dump(again) == _dump(spec), text
    assert format_dsl(again) == text  # formatting what it printed changes nothing
    return text


def _via_yaml(spec) -> str:
    text = format_yaml(spec)
    again = _ast(yaml.safe_load(text), type(spec))
    assert _dump(again) == _dump(spec), text
    assert format_yaml(again) == text
    return text


def _same_package(first: Path, second: Path) -> None:
    spec_a, graph_a = nlc.load(first)
    spec_b, graph_b = nlc.load(second)
    assert _dump(spec_a.ast) == _dump(spec_b.ast)
    assert package_files(graph_a, spec_a) == package_files(graph_b, spec_b)


def test_every_example_exists_in_both_forms():
    assert NAMES and sorted(p.stem for p in EXAMPLES.glob("*.nlc")) == NAMES


@pytest.mark.parametrize("name", example_specs.MODELS)
def test_example_forms_build_the_same_package(name: str):
    _same_package(EXAMPLES / f"{name}.yaml", EXAMPLES / f"{name}.nlc")


@ROUND_TRIPS
@given(any_specs)
def test_random_specs_round_trip_through_the_dsl(case: Case):
    _via_dsl(_ast(case.spec))


@ROUND_TRIPS
@given(any_specs)
def test_random_specs_round_trip_through_yaml(case: Case):
    _via_yaml(_ast(case.spec))


@settings(max_examples=15, deadline=None)
@given(any_specs)
def test_random_specs_build_the_same_package_from_both_forms(builder, case: Case):
    spec = _ast(case.spec)
    path = builder.write_spec(case.spec)
    path.write_text(format_yaml(spec))
    path.with_suffix(".nlc").write_text(format_dsl(spec))
    _same_package(path, path.with_suffix(".nlc"))


# Names that are DSL keywords, `${...}` text that is no DSL expression, odd strings and values.
UNUSUAL = {
    "nlc": 1,
    "name": "m",
    "params": {"block": 3, "B": 2, "act": "silu", "half": "${block // 2}", "p": 1e-7},
    "inputs": {"input": {"shape": ["B", "${block}", "${B}", "true", 4], "dtype": "f32"}},
    "blocks": {
        "output": {
            "params": {"c": "int", "k": {"type": "int", "default": 3}, "s": {"default": "int"}},
            "inputs": ["include", "model"],
            "graph": [
                {"op": "relu", "name": "input", "in": "include"},
                {"op": "concat", "in": [], "dim": -1},
            ],
            "outputs": [],
        },
        "empty": {"inputs": [], "graph": []},
    },
    "graph": [
        {"op": "linear", "name": "output", "in": ["input"], "out": "${ block }", "tie": None},
        {"op": "conv2d", "in": "input", "kernel": [3, "${block}"], "padding": "${[1, 1]}"},
        {"op": "mix", "x": "${-1}", "y": -0.5, "z": 'say "hi"\n\tand\u2028\u00e9', "w": {"a": [1]}},
        {"op": "output", "name": "block", "in": ["output", "input[0]"], "repeat": "${block}"},
        "relu",
        {"op": "relu", "name": "model"},
        "gelu",
    ],
    "outputs": [],
    "targets": ["cpu"],
    "dims": {"B": 4},
}


def test_unusual_specs_round_trip():
    spec = _ast(UNUSUAL)
    text = _via_dsl(spec)
    _via_yaml(spec)
    assert '(input) -> linear(out="${ block }", tie=null) as output' in text  # not an expression
    assert "(include) -> relu() as input" in text  # `include` and `input` begin statements
    assert 'input input: f32["B", block, B, "true", 4]' in text  # B is a param: "B" is a dim
    assert "() -> concat(dim=-1)" in text and "    output\n" in text and "    input\n" in text


def test_include_files_in_either_form(tmp_path: Path):
    library = IncludeSpec.model_validate(
        {
            "nlc": 1,
            "blocks": {"pair": {"inputs": ["a", "b"], "graph": [{"op": "add", "in": ["a", "b"]}]}},
        }
    )
    (tmp_path / "blocks.nlc").write_text(_via_dsl(library))
    (tmp_path / "blocks.yaml").write_text(_via_yaml(library))
    model = """model m {{
  include "{}"
  input x: [B, 4]
  input y: [B, 4]
  (x, y) -> pair()
}}
"""
    for inc in ("blocks.nlc", "blocks.yaml"):
        (tmp_path / "m.nlc").write_text(model.format(inc))
        assert nlc.load(tmp_path / "m.nlc")[1].num_params() == 0
    assert render(read(tmp_path / "blocks.nlc"), dsl=True) == (tmp_path / "blocks.nlc").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"p": float("nan")}}, "nan cannot be written in a .nlc file"),
        ({"inputs": {"x-1": {"shape": [1]}}}, "input name 'x-1' cannot be written"),
        ({"outputs": ["a.b"]}, "reference 'a.b' cannot be written"),
    ],
)
def test_what_the_dsl_cannot_write_is_a_clean_error(change, message):
    doc = {"nlc": 1, "name": "m", "inputs": {"x": {"shape": [1]}}, "graph": ["relu"], **change}
    with pytest.raises(NlcError, match=re.escape(message)):
        format_dsl(_ast(doc))


# -- generated documents --------------------------------------------------------------------


def test_schema_is_current():
    assert (ROOT / "spec" / "nlc.schema.json").read_text() == schema_text(), (
        "run `python -m nlc.frontend.reference`"
    )


def test_reference_is_current_and_lists_every_op():
    readme = (ROOT / "spec" / "README.md").read_text()
    assert render_reference(readme) == readme, "run `python -m nlc.frontend.reference`"
    assert (EXAMPLES / "cnn_digits.nlc").read_text() in readme  # the DSL's example
    for name, op in REGISTRY.items():
        section = readme.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        assert op.doc in section
        for attr in op.Attrs.model_fields:
            assert f"| `{attr}` |" in section, (name, attr)


def test_schema_accepts_the_examples_and_knows_attributes():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema())
    for name in NAMES:  # search spaces too: the schema knows choice markers
        assert not list(
            validator.iter_errors(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))
        )
    doc = {"nlc": 1, "name": "m", "inputs": {"x": {"shape": ["B", 4]}}}
    assert validator.is_valid({**doc, "graph": [{"op": "linear", "out": "${w}"}]})
    assert not validator.is_valid({**doc, "graph": [{"op": "linear", "outt": 3}]})
    assert not validator.is_valid({**doc, "graph": [{"op": "linear", "out": "three"}]})
    assert validator.is_valid({**doc, "graph": [{"op": "linear", "out": {"int": [2, 8]}}]})
    assert not validator.is_valid({**doc, "graph": [{"op": "linear", "out": {"choise": [2]}}]})
    assert json.loads(schema_text()) == schema()
