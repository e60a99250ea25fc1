"""The loop the decomposition passes share: select nodes, plan each rewrite, swap the op in
place, swap the node's weights for the factors, and report what happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nlc.errors import NlcError
from nlc.ir import Graph, Node
from nlc.ops.base import Attrs
from nlc.passes.auto import auto_plan
from nlc.passes.base import PassResult, Weights, replace_op
from nlc.passes.rank import AUTO, require_weights
from nlc.passes.select import selected

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target


@dataclass
class Plan:
    """One node's rewrite: the new op and attributes and, with weights, the factor tensors
    under the new op's local parameter names and the relative reconstruction error."""

    op: str
    attrs: Attrs
    rank: int | list[int]
    factors: dict[str, torch.Tensor] | None = None
    error: float | None = None


# (graph, node, the node's tensors by local name or None, options) -> a plan, or why not
Planner = Callable[[Graph, Node, "dict[str, torch.Tensor] | None", Any], "Plan | str"]
# (graph, node) -> the node's largest full rank: `rank: auto` tries fractions i / full of it
FullRank = Callable[[Graph, Node], int]
# (graph, node, tensors, max_error) -> the smallest i that an error bound does not rule out
Floor = Callable[[Graph, Node, "dict[str, torch.Tensor]", float], int]


def decompose(
    name: str,
    graph: Graph,
    weights: Weights | None,
    options: Any,
    plan: Planner,
    full_rank: FullRank,
    target: Target | None,
    floor: Floor | None = None,
) -> PassResult:
    require_weights(options.rank, weights)
    out = None if weights is None else dict(weights)
    report: list[dict[str, Any]] = []
    for node, why_not in selected(graph, options):
        row: dict[str, Any] = {"pass": name, "node": node.name, "op": node.op}
        tensors = None
        if why_not is None and out is not None:
            tensors = {k: _tensor(out, node, k) for k in node.params}
        extra: dict[str, Any] = {}  # rank auto: what the choice rests on
        if why_not is not None:
            result = why_not
        elif options.rank == AUTO:
            full = full_rank(graph, node)
            start = floor(graph, node, tensors, options.max_error) if floor and tensors else 1
            result, extra = auto_plan(graph, node, tensors, options, plan, full, target, start)
        else:
            result = plan(graph, node, tensors, options)
        if isinstance(result, str):
            report.append({**row, "skipped": result, **extra})
            continue
        before = node.num_params()
        replace_op(graph, node, result.op, result.attrs)
        if tensors is not None:
            _swap_weights(out, node, result.factors, tensors)
        report.append(
            {
                **row,
                "op_after": result.op,
                "params": before,
                "params_after": node.num_params(),
                "rank": result.rank,
                "error": result.error,
                **extra,
            }
        )
    modified = any("op_after" in row for row in report)
    return PassResult(graph, out, modified, report)


def attrs_for(op_name: str, node: Node, **extra: Any) -> Attrs:
    """The new op's attributes: the node's own where the new op has them (geometry, bias),
    plus `extra` (the ranks)."""
    from nlc.ops import REGISTRY

    model = REGISTRY[op_name].Attrs
    kept = {k: v for k, v in node.attrs.model_dump().items() if k in model.model_fields}
    return model(**kept, **extra)


def relative_error(tensor: torch.Tensor, approx: torch.Tensor) -> float:
    """||tensor - approx|| / ||tensor|| (Frobenius), 0 for an all-zero tensor."""
    import torch

    norm = float(torch.linalg.norm(tensor))
    return float(torch.linalg.norm(tensor - approx)) / norm if norm else 0.0


def _tensor(weights: Weights, node: Node, local: str) -> torch.Tensor:
    key = f"{node.name}.{local}"
    if key not in weights:
        raise NlcError(
            f"the weights have no {key!r}",
            None,
            "use the weights of this model: a state_dict of its generated Model()",
        )
    return weights[key].detach()


def _swap_weights(
    weights: Weights,
    node: Node,
    factors: dict[str, torch.Tensor] | None,
    old: dict[str, torch.Tensor] | None,
) -> None:
    """Drop the node's old tensors and add its factors, in the old weight's dtype."""
    assert factors is not None and old is not None, "a weight-aware plan gives its factors"
    declared = {k: p.shape for k, p in node.params.items()}
    given = {k: tuple(t.shape) for k, t in factors.items()}
    assert given == declared, f"{node.name}: factors {given}, {node.op} declares {declared}"
    for local in old:
        del weights[f"{node.name}.{local}"]
    dtype = old["weight"].dtype
    for local, t in factors.items():
        weights[f"{node.name}.{local}"] = t.to(dtype).contiguous()
