"""Per-node parameter and multiply-accumulate counts."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from nlc.ir import Graph, Node
from nlc.ir.types import Dim, sym
from nlc.ops import REGISTRY


@dataclass(frozen=True)
class NodeCount:
    node: Node
    params: int
    macs: int


def concretize(d: Dim, dims: dict[str, int]) -> int:
    """Evaluate a symbolic size with the given values for the symbolic dims."""
    if isinstance(d, int):
        return d
    value = d.subs({sym(k): v for k, v in dims.items()})
    if not value.is_number:
        missing = ", ".join(sorted(str(s) for s in value.free_symbols))
        raise ValueError(f"no value for symbolic dim(s) {missing}")
    return int(sympy.floor(value))


def node_counts(graph: Graph, dims: dict[str, int]) -> list[NodeCount]:
    """Parameters (ties counted once) and MACs of every non-input node, symbols set by `dims`."""
    rows = []
    for node in graph:
        if node.op == "input":
            continue
        op = REGISTRY[node.op]
        params = sum(p.numel() for p in node.params.values() if p.tied_to is None)
        macs = op.macs(node.attrs, graph.input_types(node), node.outputs)
        rows.append(NodeCount(node, params, concretize(macs, dims)))
    return rows
