"""The IR verifier: structural invariants every pass must preserve."""

from __future__ import annotations

import re

from nlc.ir.graph import Graph, Node, Param
from nlc.ir.types import types_equal

_QUALIFIED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.([A-Za-z][A-Za-z0-9_]*|\d+))*\Z")


class VerifyError(Exception):
    """A broken IR invariant: a compiler bug (or a bad pass), never a user error."""


def verify(graph: Graph) -> None:
    """Check names, SSA order, types against each op's shape rule, parameters and outputs."""
    seen: set[str] = set()
    params = dict(graph.parameters())
    for node in graph:
        if not _QUALIFIED.match(node.name):
            raise VerifyError(f"node name {node.name!r} is not a qualified identifier")
        for v in node.inputs:
            if v.node not in seen:
                raise VerifyError(f"{node.name}: input {v} is not defined before use")
            if v.index >= len(graph.nodes[v.node].outputs):
                raise VerifyError(f"{node.name}: input {v} does not exist")
        if node.op == "input":
            if node.inputs or node.params:
                raise VerifyError(f"input {node.name} must have no inputs and no params")
        else:
            _check_op(graph, node)
        for local, p in node.params.items():
            _check_param(f"{node.name}.{local}", p, params)
        _check_frames(node)
        seen.add(node.name)
    if not graph.outputs:
        raise VerifyError("graph has no outputs")
    for name, v in graph.outputs.items():
        if v.node not in graph.nodes or v.index >= len(graph.nodes[v.node].outputs):
            raise VerifyError(f"output {name} refers to missing value {v}")


def _check_op(graph: Graph, node: Node) -> None:
    """Recorded types and parameters equal what the op's rules give for the input types."""
    from nlc.ops import REGISTRY, ShapeError

    op = REGISTRY.get(node.op)
    if op is None:
        raise VerifyError(f"{node.name}: unknown op {node.op!r}")
    ins = graph.input_types(node)
    try:
        outs = op.infer(node.attrs, ins)
        declared = op.params(node.attrs, ins)
    except ShapeError as e:
        raise VerifyError(f"{node.name}: the inputs break {node.op}'s shape rule: {e}") from None
    if not types_equal(outs, node.outputs):
        got = ", ".join(map(str, node.outputs))
        want = ", ".join(map(str, outs))
        raise VerifyError(f"{node.name}: recorded type {got}, shape rule gives {want}")
    if {k: p.shape for k, p in declared.items()} != {k: p.shape for k, p in node.params.items()}:
        raise VerifyError(f"{node.name}: parameters do not match {node.op}'s declaration")


def _check_param(name: str, p: Param, params: dict[str, Param]) -> None:
    if not all(isinstance(d, int) and d > 0 for d in p.shape):
        raise VerifyError(f"{name}: parameter shape {p.shape} is not concrete")
    if p.tied_to is not None:
        target = params.get(p.tied_to)
        if target is None or target.shape != p.shape or target.tied_to is not None:
            raise VerifyError(f"{name}: bad tie to {p.tied_to}")


def _check_frames(node: Node) -> None:
    """Frames nest, and the node sits inside the innermost; a repeated op is its own frame."""
    for outer, inner in zip(node.frames, node.frames[1:], strict=False):
        if not inner.path.startswith(outer.path + "."):
            raise VerifyError(f"{node.name}: frame {inner.path} is not inside {outer.path}")
    if node.frames:
        inner = node.frames[-1]
        own = inner.block is None and node.name == inner.path
        if not (own or node.name.startswith(inner.path + ".")):
            raise VerifyError(f"{node.name}: name is not inside its frame {inner.path}")
