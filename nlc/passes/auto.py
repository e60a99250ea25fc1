"""`rank: auto`: per layer, the smallest rank within an error budget, kept only where the cost
model predicts the factorized layer faster than the dense one on the target.

With weights, the rank is the smallest candidate (fraction i/full of the pass's full rank)
whose decomposition's relative error is at most `max_error`, found by binary search with the
decomposition itself as the oracle (the error falls as the rank grows; the full rank is exact).
Without weights there is no error to bound, so it is the largest of STRUCTURAL_FRACTIONS of
the full rank predicted faster. A pass whose error has a closed form (SVD: the singular values
left out) gives the search its start. Either way the node is timed alone, at batch 1 and the spec's
other dims, as `nlc.analysis.cost` times it inside the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from nlc.ir import Graph, Node, Value
from nlc.ops.base import NoAttrs
from nlc.passes.base import replace_op
from nlc.passes.select import Selection

if TYPE_CHECKING:
    import torch

    from nlc.passes.decompose import Plan, Planner
    from nlc.targets import Target

STRUCTURAL_FRACTIONS = (0.75, 0.5, 0.25)
DEFAULT_TARGET = "cpu"


class Decomposition(Selection):
    """The options every decomposition pass has besides its rank: those of `rank: auto`."""

    max_error: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="rank auto: the relative reconstruction error (Frobenius) allowed per layer",
    )
    target: str | None = Field(
        default=None,
        description="rank auto: the hardware target whose predicted latency decides (default: "
        "the spec's first target, else cpu)",
    )


def auto_plan(
    graph: Graph,
    node: Node,
    tensors: dict[str, torch.Tensor] | None,
    options: Decomposition,
    plan: Planner,
    full: int,
    target: Target | None,
    start: int = 1,
) -> tuple[Plan | str, dict[str, Any]]:
    """The plan for `node` at the automatic rank, or why it stays dense, with the report
    fields (target, predicted microseconds dense and factorized) that back the choice.
    Candidates are i / `full`; with weights the search starts at i = `start`."""
    target = _target(options, target)
    dense = node_seconds(graph, node, target)
    at = _Ranks(graph, node, tensors, options, plan, full)
    if tensors is None:
        candidates = [at(max(1, round(f * full))) for f in STRUCTURAL_FRACTIONS]
    else:
        candidates = [at(at.smallest_within(options.max_error, start))]
    extra: dict[str, Any] = {"target": target.name, "dense_us": _us(dense)}
    for p in candidates:
        if isinstance(p, str):  # the pass cannot rewrite this node at any rank
            return p, {}
        factorized = node_seconds(graph, node, target, p)
        extra["factorized_us"] = _us(factorized)
        if factorized < dense:
            return p, extra
    why = f"kept dense: factorized {_us(factorized)} us vs dense {_us(dense)} us on {target.name}"
    return why, {**extra, "rank": p.rank, "error": p.error}


class _Ranks:
    """Plans of one node at candidate ranks i/full, each computed once."""

    def __init__(self, graph, node, tensors, options, plan: Planner, full: int) -> None:
        self.full = full
        self.cache: dict[int, Plan | str] = {}
        self.make: Callable[[int], Plan | str] = lambda i: plan(
            graph, node, tensors, options.model_copy(update={"rank": i / full})
        )

    def __call__(self, i: int) -> Plan | str:
        if i not in self.cache:
            self.cache[i] = self.make(i)
        return self.cache[i]

    def within(self, i: int, max_error: float) -> bool:
        p = self(i)
        return isinstance(p, str) or p.error <= max_error  # a str: no rank works, stop

    def smallest_within(self, max_error: float, start: int = 1) -> int:
        """Galloping up from `start` (a rank no error bound rules out), then bisection: few
        decompositions when `start` is close; the full rank is exact, so always within."""
        lo, hi, step = start, start, 1
        while hi < self.full and not self.within(hi, max_error):
            lo, hi, step = hi + 1, min(self.full, hi + step), step * 2
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.within(mid, max_error) else (mid + 1, hi)
        return lo


def node_seconds(graph: Graph, node: Node, target: Target, plan: Plan | None = None) -> float:
    """Predicted seconds of `node` alone (or of its rewrite by `plan`) on `target`: a graph of
    just its inputs and the node, analysed at batch 1 and the spec's other dims."""
    from nlc.analysis.cost import BATCH, analyze

    alone = Graph(f"{graph.name}_node", meta={"symbols": graph.meta.get("symbols", [])})
    names = [f"_in{i}" for i in range(len(node.inputs))]
    for name, v in zip(names, node.inputs, strict=True):
        alone.add(Node(name, "input", NoAttrs(), [], [graph.type_of(v)]))
    copy = alone.add(dataclasses.replace(node, inputs=[Value(n) for n in names]))
    alone.outputs = {"y": Value(copy.name)}
    if plan is not None:
        replace_op(alone, copy, plan.op, plan.attrs)
    dims = {k: v for k, v in graph.meta.get("dims", {}).items() if k in alone.meta["symbols"]}
    if BATCH in alone.meta["symbols"]:
        dims[BATCH] = 1
    return sum(n.time.total for n in analyze(alone, target, dims).nodes)


def _target(options: Decomposition, given: Target | None) -> Target:
    from nlc.targets import load_target

    if options.target is not None:
        return load_target(options.target)
    return given or load_target(DEFAULT_TARGET)


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)
