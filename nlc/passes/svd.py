"""Truncated SVD: a linear layer becomes two thinner ones (`lowrank_linear`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from nlc.ir import Graph, Node
from nlc.passes.auto import Decomposition
from nlc.passes.base import PassResult, Weights, register
from nlc.passes.decompose import Plan, attrs_for, decompose, relative_error
from nlc.passes.rank import Energy, Rank, check_fits, choose

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target


class SvdOptions(Decomposition):
    ops: list[Literal["linear"]] = Field(default=["linear"], description="op types to rewrite")
    rank: Rank = Field(
        default=0.5,
        description="int (absolute), float in (0, 1] (fraction of min(in, out)) or "
        "{energy: e} (fraction of the squared singular values kept; needs weights) "
        "or auto (see max_error, target)",
    )


@register("svd", SvdOptions)
def svd(
    graph: Graph, weights: Weights | None, options: SvdOptions, target: Target | None = None
) -> PassResult:
    """Factor linear layers by truncated SVD: W [out, in] ~ (U_r S_r^1/2)(S_r^1/2 V_r^T).

    The singular values are split evenly between the two factors so neither dominates the
    scale; the bias stays on the second layer.
    """
    return decompose("svd", graph, weights, options, _plan, full_rank, target, _floor)


def full_rank(graph: Graph, node: Node) -> int:
    return min(graph.input_types(node)[0].shape[-1], node.attrs.out)


def _floor(graph: Graph, node: Node, tensors: dict[str, torch.Tensor], max_error: float) -> int:
    """The rank whose left-out singular values are exactly the error budget (Eckart-Young)."""
    return choose(Energy(energy=1 - max_error**2), full_rank(graph, node), tensors["weight"])


def _plan(graph: Graph, node: Node, tensors: dict[str, torch.Tensor] | None, options) -> Plan:
    full = full_rank(graph, node)
    check_fits(options.rank, full, node)
    if tensors is None:
        rank = choose(options.rank, full)
        return Plan("lowrank_linear", attrs_for("lowrank_linear", node, rank=rank), rank)
    import torch

    w = tensors["weight"].double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank = choose(options.rank, full, w)
    root = s[:rank].sqrt()
    first, second = root[:, None] * vh[:rank], u[:, :rank] * root
    factors = {"0.weight": first, "1.weight": second}
    if "bias" in tensors:
        factors["1.bias"] = tensors["bias"]
    attrs = attrs_for("lowrank_linear", node, rank=rank)
    return Plan("lowrank_linear", attrs, rank, factors, relative_error(w, second @ first))
