"""Tucker-2: a convolution becomes 1x1 in, a small core convolution, 1x1 out (`tucker_conv2d`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from nlc.ir import Graph, Node
from nlc.passes.auto import Decomposition, first_holding
from nlc.passes.base import PassResult, Weights, register
from nlc.passes.decompose import Plan, attrs_for, decompose, relative_error
from nlc.passes.rank import Energy, RankPair, check_fits, choose, unfold

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target


class TuckerOptions(Decomposition):
    ops: list[Literal["conv2d"]] = Field(default=["conv2d"], description="op types to rewrite")
    rank: RankPair = Field(
        default=0.5,
        description="one rank for the input- and output-channel modes, or [in, out]: int, "
        "float in (0, 1] (fraction of that mode's full rank), {energy: e} (needs weights) "
        "or auto (see max_error, target)",
    )
    n_iter_max: int = Field(default=100, gt=0, description="HOOI iterations at most")
    tol: float = Field(default=1e-5, ge=0, description="stop when the error changes less")


@register("tucker", TuckerOptions)
def tucker(
    graph: Graph, weights: Weights | None, options: TuckerOptions, target: Target | None = None
) -> PassResult:
    """Factor convolutions by Tucker-2 on the channel modes of the weight [out, cin, kh, kw].

    TensorLy's `partial_tucker` (HOOI from an SVD init, so deterministic) on modes 0 and 1;
    the kernel modes stay whole in the core. The full rank of a mode is the rank its
    unfolding can have: min(cin, out*kh*kw) for the input channels, min(out, cin*kh*kw) for
    the output channels; at full rank the decomposition is exact.
    """
    return decompose("tucker", graph, weights, options, _plan, full_rank, target, _floor)


def full_rank(graph: Graph, node: Node) -> int:
    return max(_full(node))


def _floor(graph: Graph, node: Node, tensors: dict[str, torch.Tensor], max_error: float) -> int:
    """The least i of `rank: auto`'s ranks i / full whose mode ranks keep each channel
    unfolding's truncation error within `max_error`: a Tucker error is at least those
    (Eckart-Young), so no smaller i is within it."""
    w = tensors["weight"].double()
    full, keep = _full(node), Energy(energy=1 - max_error**2)
    least = [choose(keep, f, unfold(w, m)) for f, m in zip(full, (1, 0), strict=True)]
    big = max(full)

    def enough(i: int) -> bool:
        return all(choose(i / big, f) >= r for f, r in zip(full, least, strict=True))

    return first_holding(1, big, enough)


def _full(node: Node) -> tuple[int, int]:
    """The full ranks [in, out] of the input- and output-channel modes."""
    out, cin, kh, kw = node.params["weight"].shape
    return min(cin, out * kh * kw), min(out, cin * kh * kw)


def _plan(graph: Graph, node: Node, tensors: dict[str, torch.Tensor] | None, options) -> Plan:
    full = _full(node)
    want = options.rank if isinstance(options.rank, tuple) else (options.rank,) * 2
    for r, f in zip(want, full, strict=True):
        check_fits(r, f, node)
    if tensors is None:
        ranks = [choose(r, f) for r, f in zip(want, full, strict=True)]
        return Plan("tucker_conv2d", attrs_for("tucker_conv2d", node, ranks=ranks), ranks)
    import tensorly as tl
    from tensorly.decomposition import partial_tucker
    from tensorly.tenalg import multi_mode_dot

    w = tensors["weight"].double()
    r_in = choose(want[0], full[0], unfold(w, 1))
    r_out = choose(want[1], full[1], unfold(w, 0))
    with tl.backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(
            w,
            rank=[r_out, r_in],
            modes=[0, 1],
            init="svd",
            n_iter_max=options.n_iter_max,
            tol=options.tol,
            random_state=0,
        )
        approx = multi_mode_dot(core, [u_out, u_in], modes=[0, 1])
    factors = {
        "0.weight": u_in.T[:, :, None, None],
        "1.weight": core,
        "2.weight": u_out[:, :, None, None],
    }
    if "bias" in tensors:
        factors["2.bias"] = tensors["bias"]
    ranks = [r_in, r_out]
    attrs = attrs_for("tucker_conv2d", node, ranks=ranks)
    return Plan("tucker_conv2d", attrs, ranks, factors, relative_error(w, approx))
