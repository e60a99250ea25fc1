"""What running a graph in a given dtype touches, symbolically: per-node op costs and the
storage each value lives in. The cost and memory models evaluate it at concrete dims."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nlc.analysis.counts import concretize
from nlc.ir import Graph, Node, Value
from nlc.ir.types import DTYPE_BYTES, FLOAT_DTYPES, Dim
from nlc.ops import REGISTRY
from nlc.ops.base import OpCost, Size


def running_dtype(declared: str, dtype: str | None) -> str:
    """The dtype a tensor declared as `declared` has when floating-point tensors run in
    `dtype` (None: as declared)."""
    return dtype if dtype and declared in FLOAT_DTYPES else declared


def byte_size(dtype: str | None) -> Size:
    return lambda t: t.numel() * DTYPE_BYTES[running_dtype(t.dtype, dtype)]


@dataclass
class Plan:
    """The graph run with its floating-point tensors (weights too) in `dtype`, or as declared
    when `dtype` is None. Only `live` nodes run: the inputs and what the outputs depend on
    (the generated model does not call the others). `costs` holds the forward cost of each
    live non-input node; `roots` maps each value to the value that owns its storage (views
    share their input's), and `train_roots` does so in training, where dropout copies."""

    graph: Graph
    dtype: str | None
    size: Size = field(init=False)
    live: list[Node] = field(init=False)
    costs: dict[str, OpCost] = field(init=False)
    roots: dict[Value, Value] = field(init=False)
    train_roots: dict[Value, Value] = field(init=False)

    def __post_init__(self) -> None:
        self.size = byte_size(self.dtype)
        needed = {v.node for v in self.graph.outputs.values()}
        for node in reversed(self.graph.nodes.values()):
            if node.name in needed:
                needed.update(v.node for v in node.inputs)
        self.live = [n for n in self.graph if n.name in needed or n.op == "input"]
        self.costs = {
            n.name: REGISTRY[n.op].cost(
                n.attrs, self.graph.input_types(n), n.outputs, n.params, self.size
            )
            for n in self.live
            if n.op != "input"
        }
        self.roots = _storage(self.graph, train=False)
        self.train_roots = _storage(self.graph, train=True)


def _storage(graph: Graph, train: bool) -> dict[Value, Value]:
    roots: dict[Value, Value] = {}
    for node in graph:
        op = REGISTRY.get(node.op)
        view = op is not None and op.kind == "view" and not (train and op.train_copy)
        for i in range(len(node.outputs)):
            roots[Value(node.name, i)] = roots[node.inputs[0]] if view else Value(node.name, i)
    return roots


def evaluator(dims: dict[str, int]) -> Callable[[Dim], int]:
    """`concretize` at `dims`, remembering results: a graph repeats a few shapes many times."""
    seen: dict[Dim, int] = {}

    def at(d: Dim) -> int:
        if d not in seen:
            seen[d] = concretize(d, dims)
        return seen[d]

    return at
