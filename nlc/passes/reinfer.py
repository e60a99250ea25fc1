"""Re-run shape inference over a graph after a pass changed attributes (channel counts): every
node's output types and declared parameters follow from its (new) input types."""

from __future__ import annotations

from dataclasses import replace

from nlc.ir import Graph
from nlc.ir.types import TensorType, types_equal
from nlc.ir.verify import VerifyError


def reinfer(graph: Graph) -> None:
    """Recompute `outputs` and `params` of every node in topological order, in place; ties
    (`tied_to`) carry over. A shape rule that no longer holds is a bug of the calling pass."""
    from nlc.ops import REGISTRY, ShapeError

    for node in graph:
        if node.op == "input":
            continue
        op = REGISTRY[node.op]
        ins = graph.input_types(node)
        try:
            node.outputs = op.infer(node.attrs, ins)
            params = op.params(node.attrs, ins)
        except ShapeError as e:
            raise VerifyError(f"{node.name}: the new inputs break {node.op}'s rule: {e}") from None
        old = node.params
        node.params = {
            k: replace(p, tied_to=old[k].tied_to) if k in old else p for k, p in params.items()
        }


def interface(graph: Graph) -> list[TensorType]:
    """The types of the model's inputs then outputs: what a channel rewrite must keep."""
    return [n.type for n in graph.inputs] + [graph.type_of(v) for v in graph.outputs.values()]


def keep_interface(graph: Graph, before: list[TensorType]) -> None:
    """Raise VerifyError when the graph's interface differs from `before`."""
    if not types_equal(before, interface(graph)):
        got = ", ".join(map(str, interface(graph)))
        raise VerifyError(f"the model's inputs/outputs changed to {got}")
