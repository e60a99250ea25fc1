"""Tensor train: a linear layer becomes a chain of small cores (`tt_linear`)."""

from __future__ import annotations

from functools import partial
from math import prod
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from nlc.ir import Graph, Node
from nlc.passes.auto import Decomposition
from nlc.passes.base import PassResult, Weights, register
from nlc.passes.decompose import Plan, attrs_for, decompose, relative_error
from nlc.passes.rank import Rank, choose

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target


class TtOptions(Decomposition):
    ops: list[Literal["linear"]] = Field(default=["linear"], description="op types to rewrite")
    modes: int = Field(
        default=2,
        ge=2,
        le=6,
        description="number of cores: in and out features are each split into this many factors",
    )
    rank: Rank = Field(
        default=0.5,
        description="each inner TT rank: int (absolute), float in (0, 1] (fraction of that "
        "rank's maximum), {energy: e} (of that split's unfolding; needs weights) "
        "or auto (see max_error, target)",
    )


@register("tt", TtOptions)
def tt(
    graph: Graph, weights: Weights | None, options: TtOptions, target: Target | None = None
) -> PassResult:
    """Factor linear layers into tensor-train matrices (TensorLy's `tensor_train_matrix`).

    In and out features are each split into `modes` balanced factors (in ascending, out
    descending, so the core sizes n_k = in_k*out_k stay even); a layer whose features do not
    split into factors of at least 2 is skipped. The full inner rank k is the rank the k-th
    split of W^T can have, min(n_1...n_k, n_k+1...n_d); fractions are of it, and at full rank
    the decomposition is exact.
    """
    full = partial(full_rank, modes=options.modes)
    return decompose("tt", graph, weights, options, _plan, full, target)


def full_rank(graph: Graph, node: Node, modes: int) -> int:
    """The largest full inner rank, 1 for a layer whose features do not split."""
    parts = _split(graph, node, modes)
    if isinstance(parts, str):
        return 1
    sizes = parts[2]
    return max(min(prod(sizes[: k + 1]), prod(sizes[k + 1 :])) for k in range(modes - 1))


def _split(graph: Graph, node: Node, d: int) -> tuple[list[int], list[int], list[int]] | str:
    """In modes, out modes (descending) and core sizes in_k*out_k, or why there are none."""
    fin, out = graph.input_types(node)[0].shape[-1], node.attrs.out
    in_modes, out_modes = factorize(fin, d), factorize(out, d)
    for what, n, split in (("input", fin, in_modes), ("output", out, out_modes)):
        if split is None:
            return f"its {what} features ({n}) do not split into {d} factors of at least 2"
    out_modes = out_modes[::-1]
    return in_modes, out_modes, [i * o for i, o in zip(in_modes, out_modes, strict=True)]


def _plan(graph: Graph, node: Node, tensors: dict[str, torch.Tensor] | None, options) -> Plan | str:
    fin, out, d = graph.input_types(node)[0].shape[-1], node.attrs.out, options.modes
    parts = _split(graph, node, d)
    if isinstance(parts, str):
        return parts
    in_modes, out_modes, sizes = parts
    interleaved = None  # W^T with the modes paired (i1, o1, i2, o2, ...), for energy ranks
    if tensors is not None:
        w = tensors["weight"].double()
        wt = w.T.reshape(*in_modes, *out_modes)  # W^T [in, out], multi-indices row-major
        interleaved = wt.permute(*(j for k in range(d) for j in (k, d + k))).reshape(sizes)
    ranks = [1]
    for k in range(d - 1):
        rows, cols = prod(sizes[: k + 1]), prod(sizes[k + 1 :])
        split = None if interleaved is None else interleaved.reshape(rows, cols)
        # TensorLy's TT-SVD also caps a rank at the previous one times this core's size.
        ranks.append(min(ranks[-1] * sizes[k], choose(options.rank, min(rows, cols), split)))
    ranks.append(1)
    attrs = attrs_for("tt_linear", node, in_modes=in_modes, out_modes=out_modes, ranks=ranks)
    if tensors is None:
        return Plan("tt_linear", attrs, ranks)
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    with tl.backend_context("pytorch"):
        cores = tensor_train_matrix(wt, rank=list(ranks)).factors
        approx = tl.tt_matrix_to_tensor(cores).reshape(fin, out).T
    factors = {f"cores.{k}": core for k, core in enumerate(cores)}
    if "bias" in tensors:
        factors["bias"] = tensors["bias"]
    return Plan("tt_linear", attrs, ranks, factors, relative_error(w, approx))


def factorize(n: int, d: int) -> list[int] | None:
    """The most balanced split of `n` into `d` factors of at least 2 (the largest factor as
    small as it can be), ascending; None when there is none.

    >>> factorize(784, 2), factorize(64, 3), factorize(13, 2), factorize(12, 3)
    ([28, 28], [4, 4, 4], None, [2, 2, 3])
    """
    best: list[int] | None = None

    def walk(rest: int, k: int, low: int, acc: list[int]) -> None:
        nonlocal best
        if k == 1:
            if rest >= low and (best is None or rest < best[-1]):
                best = [*acc, rest]
            return
        f = low
        while f**k <= rest:
            if rest % f == 0:
                walk(rest // f, k - 1, f, [*acc, f])
            f += 1

    walk(n, d, 2, [])
    return best
