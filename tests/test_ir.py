"""The IR: the verifier rejects corrupted graphs; parameter counting and printing."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

import nlc
from nlc.ir import Frame, Graph, TensorType, Value
from nlc.ir.graph import Param
from nlc.ir.printer import format_graph
from nlc.ir.types import sym
from nlc.ir.verify import VerifyError, verify
from nlc.ops import REGISTRY
from nlc.ops.base import Op

TINY = {
    "nlc": 1,
    "name": "tiny",
    "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
    "blocks": {
        "mlp": {
            "params": {"w": "int"},
            "graph": [{"op": "linear", "name": "fc", "out": "${w}"}, "relu"],
        }
    },
    "graph": [
        {"op": "embedding", "name": "emb", "num": 10, "dim": 8},
        {"op": "mlp", "name": "body", "w": 8, "repeat": 2},
        {"op": "linear", "name": "scale", "out": 8, "repeat": 2},
        {"op": "split", "name": "parts", "chunks": 2},
        {"op": "concat", "name": "swap", "in": ["parts[1]", "parts[0]"], "dim": -1},
        {"op": "linear", "name": "head", "out": 10, "bias": False, "tie": "emb"},
    ],
}


@pytest.fixture(scope="module")
def tiny(builder) -> Graph:
    return nlc.load(builder.write_spec(TINY))[1]


@pytest.fixture
def graph(tiny: Graph) -> Graph:
    """A private copy to corrupt."""
    return copy.deepcopy(tiny)


def test_lowered_graph_verifies_including_repeated_ops(tiny: Graph):
    verify(tiny)
    # A repeated op is its own frame: its name equals the frame path.
    assert [f.path for f in tiny.nodes["scale.1"].frames] == ["scale.1"]


def test_num_params_counts_a_tie_once(tiny: Graph):
    names = dict(tiny.parameters())
    assert names["head.weight"].tied_to == "emb.weight"
    # embedding 10x8, two linears 8x8 + 8 in `body` and two in `scale`; the head adds nothing.
    assert tiny.num_params() == 80 + 4 * (64 + 8)
    assert sum(p.numel() for p in names.values()) == tiny.num_params() + 80


def test_printer_shows_ties_and_multiple_outputs(tiny: Graph):
    text = format_graph(tiny)
    assert "%parts : f32[B,T,4], f32[B,T,4] = split[chunks=2](%scale.1)" in text
    assert "= concat[dim=-1](%parts#1, %parts)" in text
    assert "{weight=emb.weight}" in text
    assert text.endswith("  return head=%head\n}\n")


def _set_output(graph: Graph, name: str, t: TensorType) -> None:
    graph.nodes[name].outputs = [t]


def _reorder(graph: Graph, first: str) -> None:
    graph.nodes = {first: graph.nodes[first], **graph.nodes}


CORRUPTIONS = [
    pytest.param(
        lambda g: _set_output(g, "body.0.fc", TensorType((sym("B"), sym("T"), 9))),
        "recorded type",
        id="wrong shape",
    ),
    pytest.param(
        lambda g: _set_output(g, "body.0.fc", TensorType((sym("B"), sym("T"), 8), "f16")),
        "recorded type",
        id="wrong dtype",
    ),
    pytest.param(lambda g: _reorder(g, "head"), "not defined before use", id="use before def"),
    pytest.param(
        lambda g: setattr(g.nodes["swap"], "inputs", [Value("parts", 2)]),
        "does not exist",
        id="missing output index",
    ),
    pytest.param(
        lambda g: setattr(g.nodes["body.0.fc"], "inputs", [Value("ids")]),
        "shape rule",
        id="inputs break the shape rule",
    ),
    pytest.param(
        lambda g: setattr(g.nodes["body.0.relu"], "op", "relux"), "unknown op", id="unknown op"
    ),
    pytest.param(lambda g: setattr(g.nodes["head"], "name", "head-1"), "qualified", id="bad name"),
    pytest.param(
        lambda g: g.nodes["body.0.fc"].params.pop("bias"), "declaration", id="params differ"
    ),
    pytest.param(
        lambda g: g.nodes["head"].params.update(weight=Param((10, 8), tied_to="nope.weight")),
        "bad tie",
        id="tie to a missing param",
    ),
    pytest.param(
        lambda g: g.nodes["head"].params.update(weight=Param((10, 8), tied_to="body.0.fc.weight")),
        "bad tie",
        id="tie of another shape",
    ),
    pytest.param(
        lambda g: g.nodes["emb"].params.update(weight=Param((10, 8), tied_to="head.weight")),
        "bad tie",
        id="tie to a tied param",
    ),
    pytest.param(
        lambda g: setattr(g.nodes["body.1.fc"], "frames", (Frame("body.0", "mlp", "body", 0),)),
        "not inside its frame",
        id="node outside its frame",
    ),
    pytest.param(
        lambda g: setattr(
            g.nodes["body.1.fc"], "frames", (Frame("scale.0", None), Frame("body.1", "mlp"))
        ),
        "is not inside scale.0",
        id="frames not nested",
    ),
    pytest.param(
        lambda g: g.nodes["ids"].params.update(w=Param((1,))), "no params", id="input with params"
    ),
    pytest.param(lambda g: g.outputs.clear(), "no outputs", id="no outputs"),
    pytest.param(
        lambda g: g.outputs.update(head=Value("gone")), "missing value", id="output to no node"
    ),
    pytest.param(
        lambda g: g.outputs.update(head=Value("head", 1)),
        "missing value",
        id="output to no index",
    ),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPTIONS)
def test_verifier_rejects_corruption(graph: Graph, corrupt, message: str):
    verify(graph)
    corrupt(graph)
    with pytest.raises(VerifyError, match=message):
        verify(graph)


class _Symbolic(Op):
    """An op whose parameter declaration forgot to make its shape concrete."""

    name = "symbolic_param"
    doc = "test only"

    def infer(self, a, ins):
        return [ins[0]]

    def params(self, a, ins):
        return {"weight": Param(ins[0].shape)}


def test_verifier_rejects_non_concrete_parameter(graph: Graph, monkeypatch):
    monkeypatch.setitem(REGISTRY, _Symbolic.name, _Symbolic())
    node = graph.nodes["body.0.relu"]
    node.op = _Symbolic.name
    node.params = _Symbolic().params(node.attrs, graph.input_types(node))
    with pytest.raises(VerifyError, match="not concrete"):
        verify(graph)


def test_duplicate_node_name_is_refused(graph: Graph):
    node = replace(graph.nodes["head"])
    with pytest.raises(ValueError, match="duplicate"):
        graph.add(node)


def test_local_name_is_the_attribute_in_the_block(tiny: Graph):
    assert tiny.nodes["body.1.fc"].local_name == "fc"
    assert tiny.nodes["head"].local_name == "head"
    assert tiny.nodes["head"].type == TensorType((sym("B"), sym("T"), 10))
