"""CP: a convolution becomes 1x1 in, depthwise kh x 1, depthwise 1 x kw, 1x1 out (`cp_conv2d`)."""

from __future__ import annotations

import warnings
from math import prod
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from nlc.ir import Graph, Node
from nlc.passes.auto import Decomposition
from nlc.passes.base import PassResult, Weights, register
from nlc.passes.decompose import Plan, attrs_for, decompose, relative_error
from nlc.passes.rank import Energy, Rank, choose, unfold

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target


class CpOptions(Decomposition):
    ops: list[Literal["conv2d"]] = Field(default=["conv2d"], description="op types to rewrite")
    rank: Rank = Field(
        default=0.25,
        description="int (absolute), float in (0, 1] (fraction of the exact rank, the weight's "
        "size over its largest dimension) or {energy: e} (rank of the output-channel "
        "unfolding keeping that energy; needs weights) or auto (see max_error, target)",
    )
    n_iter_max: int = Field(default=200, gt=0, description="ALS iterations at most")
    tol: float = Field(default=1e-8, ge=0, description="stop when the error changes less")


@register("cp", CpOptions)
def cp(
    graph: Graph, weights: Weights | None, options: CpOptions, target: Target | None = None
) -> PassResult:
    """Factor convolutions into R rank-one terms of the weight [out, cin, kh, kw] (CP).

    CP rank has no closed form, so "full rank" is the generic bound at which an exact CP
    always exists: the weight's size over its largest dimension (one term per index of the
    other three modes). At that rank the factors are written down exactly; below it they come
    from TensorLy's `parafac` (ALS from an SVD init, deterministic), with the weights of the
    terms folded into the output factor.
    """
    return decompose("cp", graph, weights, options, _plan, full_rank, target, _floor)


def full_rank(graph: Graph, node: Node) -> int:
    shape = node.params["weight"].shape
    return prod(shape) // max(shape)


def _floor(graph: Graph, node: Node, tensors: dict[str, torch.Tensor], max_error: float) -> int:
    """A rank below which no CP is within `max_error`: R terms give every unfolding rank at
    most R, so the error is at least each unfolding's truncation error at R (Eckart-Young).
    `rank: auto` starts its ALS search there."""
    w = tensors["weight"].double()
    keep = Energy(energy=1 - max_error**2)
    return max(choose(keep, min(unfold(w, m).shape), unfold(w, m)) for m in range(w.ndim))


def _plan(graph: Graph, node: Node, tensors: dict[str, torch.Tensor] | None, options) -> Plan:
    full = full_rank(graph, node)
    if tensors is None:
        rank = choose(options.rank, full)
        return Plan("cp_conv2d", attrs_for("cp_conv2d", node, rank=rank), rank)
    import tensorly as tl
    from tensorly.decomposition import parafac

    w = tensors["weight"].double()
    rank = choose(options.rank, full, unfold(w, 0))
    with tl.backend_context("pytorch"), warnings.catch_warnings():
        # A rank above a mode's size is expected here: the SVD init pads that factor with
        # seeded random columns, and says so for every such mode.
        warnings.filterwarnings("ignore", "Trying to compute SVD", UserWarning)
        terms = (
            _exact(w)
            if rank == full
            else parafac(
                w,
                rank,
                init="svd",
                n_iter_max=options.n_iter_max,
                tol=options.tol,
                random_state=0,
            )
        )
        approx = tl.cp_to_tensor(terms)
    lam, (a_out, a_in, a_h, a_w) = terms
    factors = {
        "0.weight": a_in.T[:, :, None, None],
        "1.weight": a_h.T[:, None, :, None],
        "2.weight": a_w.T[:, None, None, :],
        "3.weight": (a_out * lam)[:, :, None, None],
    }
    if "bias" in tensors:
        factors["3.bias"] = tensors["bias"]
    attrs = attrs_for("cp_conv2d", node, rank=rank)
    return Plan("cp_conv2d", attrs, rank, factors, relative_error(w, approx))


def _exact(w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Exact CP at rank size / largest dim, as (weights, factors): term r is the fibre of the
    largest mode at the r-th index of the other modes (row-major), times one-hot vectors that
    pick that index."""
    import torch

    big = max(range(w.ndim), key=lambda m: w.shape[m])
    rest = [m for m in range(w.ndim) if m != big]
    ranges = (torch.arange(w.shape[m], device=w.device) for m in rest)
    index = torch.cartesian_prod(*ranges)
    picks = {m: torch.nn.functional.one_hot(index[:, j], w.shape[m]).T for j, m in enumerate(rest)}
    fibres = w.permute(*rest, big).reshape(-1, w.shape[big]).T
    factors = [fibres if m == big else picks[m].to(w.dtype) for m in range(w.ndim)]
    return torch.ones(len(index), dtype=w.dtype, device=w.device), factors
