"""Frontend units: `${...}` expressions, includes, and source positions."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nlc
from nlc.errors import NlcError
from nlc.frontend.expr import ExprError, evaluate, resolve
from nlc.frontend.load import load_spec

# --- expressions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("dim // heads", 64),
        ("dim / heads", 64.0),
        ("-dim % 5", 2),
        ("2 ** 10", 1024),
        ("max(heads, 16) if dim > 512 else 0", 16),
        ("1 < heads <= 12", True),
        ("not false and true", True),
        ("int(dim * 0.5) + round(2.6) + abs(-1)", 388),
        ("act + '_x'", "gelu_x"),
        ("[dim, heads]", [768, 12]),
    ],
)
def test_evaluate(text, value):
    got = evaluate(text, {"dim": 768, "heads": 12, "act": "gelu"})
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("widht * 2", "undefined name 'widht'", "did you mean 'width'?"),
        ("width // (width - 8)", "division by zero", "'width - 8' is 0 here"),
        ("width *", "bad expression: invalid syntax", "${width * 2}"),
        ("width.bit_length()", "unsupported syntax", "min/max"),
        ("open('x')", "unsupported syntax", "min/max"),
        ("'a' * 1000000000", "needs numbers", "only + joins text"),
        ("2 ** 100", "exponent 100 is too large", "64"),
        ("width < 'a'", "cannot evaluate", "types"),
        ("1e308 ** 2", "cannot evaluate", None),
    ],
)
def test_evaluate_errors(text, message, hint):
    with pytest.raises(ExprError) as info:
        evaluate(text, {"width": 8})
    assert message in info.value.message
    assert hint is None or hint in info.value.hint


def test_resolve_walks_containers_and_leaves_plain_text():
    env = {"c": 8}
    got = resolve({"a": ["${c}", "c", "$c", "x${c}"], "b": "${c * 2}"}, env)
    assert got == {"a": [8, "c", "$c", "x${c}"], "b": 16}


def test_resolve_reports_the_expression_and_position():
    loc = nlc.errors.SourceLoc("m.yaml", 3, 9)
    with pytest.raises(NlcError) as info:
        resolve("${c // 0}", {"c": 8}, loc)
    assert info.value.loc == loc and info.value.message == "in ${c // 0}: division by zero"


_ints = st.integers(-50, 50)
_exprs = st.recursive(
    _ints.map(str) | st.just("w"),
    lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "%"]), inner).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"
    ),
    max_leaves=8,
)


@given(_exprs, _ints)
def test_evaluate_agrees_with_python(text, w):
    try:
        want = eval(text, {}, {"w": w})  # the reference: Python itself, on the same text
    except ZeroDivisionError:
        with pytest.raises(ExprError, match="division by zero"):
            evaluate(text, {"w": w})
        return
    assert evaluate(text, {"w": w}) == want


# --- includes ----------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


SHARED = """\
    nlc: 1
    blocks:
      mlp:
        params: {hidden: int}
        graph: [{op: linear, name: fc, out: "${hidden}"}, relu]
"""


def _model(include: str, extra: str = "") -> str:
    return f"""\
    nlc: 1
    name: m
    include: [{include}]
    inputs: {{x: {{shape: [B, 4]}}}}
    graph: [{{op: mlp, name: a, hidden: 8}}, {{op: mlp, name: b, hidden: 2}}{extra}]
    """


def test_shared_block_used_from_two_files(tmp_path):
    _write(
        tmp_path,
        {
            "lib/shared.yaml": SHARED,
            "one.yaml": _model("lib/shared.yaml"),
            "nested/two.yaml": _model("../lib/shared.yaml"),
        },
    )
    for spec in ("one.yaml", "nested/two.yaml"):
        _, graph = nlc.load(tmp_path / spec)
        assert graph.num_params() == (4 * 8 + 8) + (8 * 2 + 2)
        assert list(graph.nodes) == ["x", "a.fc", "a.relu", "b.fc", "b.relu"]


def test_a_file_included_twice_is_read_once(tmp_path):
    # main -> left, right; both -> shared: not a cycle, and `mlp` is not defined twice.
    _write(
        tmp_path,
        {
            "shared.yaml": SHARED,
            "left.yaml": "nlc: 1\ninclude: [shared.yaml]\n",
            "right.yaml": "nlc: 1\ninclude: [shared.yaml]\n",
            "main.yaml": _model("left.yaml, right.yaml"),
        },
    )
    spec = load_spec(tmp_path / "main.yaml")
    assert list(spec.ast.blocks) == ["mlp"]
    assert "include" not in spec.data and "mlp" in spec.data["blocks"]


def test_errors_inside_an_included_file_point_into_it(tmp_path):
    _write(
        tmp_path,
        {"lib/shared.yaml": SHARED.replace("out:", "outt:"), "one.yaml": _model("lib/shared.yaml")},
    )
    with pytest.raises(NlcError) as info:
        nlc.load(tmp_path / "one.yaml")
    loc = info.value.loc
    assert (Path(loc.file), loc.line, loc.col) == (tmp_path / "lib/shared.yaml", 5, 36)
    assert info.value.hint == "did you mean 'out'?"


# --- positions ---------------------------------------------------------------------------

DEEP = """\
nlc: 1
name: m
inputs: {x: {shape: [B, 3, 8, 8]}}
blocks:
  stage:
    params: {c: int}
    graph:
      - {op: conv2d, out: "${c}", kernel: 3, padding: 1}
      - op: batchnorm2d
        momentum: 0.1
      - op: conv2d
        out: "${c}"
        kernel: 3
        stride: 2
        padding: 1
graph:
  - {op: stage, name: s1, c: 8}
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "col", "message"),
    [
        ("momentum: 0.1", "momentm: 0.1", 10, 9, "batchnorm2d has no attribute 'momentm'"),
        ("momentum: 0.1", "momentum: 2.0", 10, 19, "attribute 'momentum' must be less than"),
        ("kernel: 3, padding", "kernel: [3], padding", 8, 9, "node 's1.conv2d' reads 'x'"),
        ("name: s1, c: 8", "name: s1, c: 8.5", 17, 30, "param 'c' of block 'stage'"),
        ("graph:\n  - {op: stage", "graph:\n  - {op: stag", 17, 10, "did you mean"),
    ],
    ids=["unknown-key", "bad-value", "shape-rule", "block-arg", "unknown-op"],
)
def test_positions_deep_in_a_block(tmp_path, old, new, line, col, message):
    spec = tmp_path / "deep.yaml"
    spec.write_text(DEEP.replace(old, new, 1))
    with pytest.raises(NlcError) as info:
        nlc.load(spec)
    err = info.value
    assert (err.loc.line, err.loc.col) == (line, col), err.render()
    assert message in err.render()


def test_the_unchanged_deep_spec_loads_with_positions(tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text(DEEP)
    loaded, graph = nlc.load(spec)
    node = loaded.ast.blocks["stage"].graph[2]
    assert (node.at("stride").line, node.at("stride").col) == (14, 17)
    assert (node.key_at("stride").line, node.key_at("stride").col) == (14, 9)
    assert graph.nodes["s1.conv2d_1"].loc == node.loc


def test_a_runaway_repeat_stops_at_the_node_limit(tmp_path, monkeypatch):
    # The module, not the `lower` function that nlc.frontend re-exports under the same name.
    monkeypatch.setattr(importlib.import_module("nlc.frontend.lower"), "MAX_NODES", 30)
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "nlc: 1\nname: m\ninputs: {x: {shape: [B, 4]}}\n"
        "blocks: {layer: {graph: [{op: linear, out: 4, repeat: 10}]}}\n"
        "graph: [{op: layer, name: stack, repeat: 10}]\n"
    )
    with pytest.raises(NlcError, match=r"grows past 30 nodes \(at 'stack.2.linear.9'\)"):
        nlc.load(spec)
