"""Unstructured magnitude pruning: the smallest weights become zeros; the graph is unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from nlc.errors import NlcError
from nlc.ir import Graph, Node
from nlc.passes.base import PassResult, Weights, register
from nlc.passes.select import Selection, selected

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target


class PruneOptions(Selection):
    ops: list[Literal["linear", "conv2d"]] = Field(
        default=["linear", "conv2d"], description="op types to prune"
    )
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="fraction of weights zeroed")
    scope: Literal["layer", "global"] = Field(
        default="layer",
        description="layer: each weight reaches the sparsity; global: one magnitude threshold "
        "over all selected weights",
    )
    pattern: Literal["none", "2:4"] = Field(
        default="none",
        description="2:4 keeps the 2 largest of every 4 consecutive input weights (sparsity 0.5)",
    )

    @model_validator(mode="after")
    def _pattern_fixes_sparsity(self):
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError("pattern 2:4 prunes exactly half: leave sparsity at 0.5")
        return self


@register("prune", PruneOptions)
def prune(
    graph: Graph, weights: Weights | None, options: PruneOptions, target: Target | None = None
) -> PassResult:
    """Zero the smallest-magnitude weights of linear and conv layers (biases stay).

    `layer` scope zeros exactly round(sparsity x size) entries of each weight; `global` ranks
    all selected weights together, so layers end at different sparsities. `2:4` works along the
    input dimension (conv: input channels at each kernel position). Shared (tied) weights are
    skipped.
    """
    if weights is None:
        raise NlcError(
            "prune: nothing to prune: unstructured pruning zeros trained weights, and this run "
            "has none (structural mode)",
            None,
            "give the weights to prune with --weights",
        )
    out = dict(weights)
    shared = {p.tied_to.rsplit(".", 1)[0] for _, p in graph.parameters() if p.tied_to}
    report: list[dict[str, Any]] = []
    chosen: list[Node] = []
    for node, _ in selected(graph, options):  # the decomposition reasons do not apply here
        row = {"pass": "prune", "node": node.name, "op": node.op}
        if node.name in shared or node.params["weight"].tied_to:
            report.append({**row, "skipped": "tied weight"})
        elif options.pattern == "2:4" and node.params["weight"].shape[1] % 4:
            report.append({**row, "skipped": "input size is not a multiple of 4"})
        else:
            chosen.append(node)
    keys = [f"{n.name}.weight" for n in chosen]
    masks = _masks([weights[k].detach() for k in keys], options)
    for node, key, keep in zip(chosen, keys, masks, strict=True):
        if options.sparsity > 0:
            out[key] = weights[key].detach() * keep.to(weights[key].dtype)
        nonzeros = int(out[key].count_nonzero())
        report.append(
            {
                "pass": "prune",
                "node": node.name,
                "op": node.op,
                "params": out[key].numel(),
                "nonzeros": nonzeros,
                "sparsity": 1 - nonzeros / out[key].numel(),
            }
        )
    return PassResult(graph, out, options.sparsity > 0 and bool(chosen), report)


def _masks(tensors: list[torch.Tensor], options: PruneOptions) -> list[torch.Tensor]:
    """Boolean keep-masks, one per tensor, zeroing exactly the counted entries (ties broken by
    position, so the counts are exact)."""
    import torch

    if options.pattern == "2:4":
        return [_two_of_four(t) for t in tensors]
    if options.scope == "layer":
        return [_keep_largest(t.abs().flatten(), options.sparsity).view_as(t) for t in tensors]
    flat = torch.cat([t.abs().flatten().float() for t in tensors]) if tensors else torch.zeros(0)
    keep = _keep_largest(flat, options.sparsity)
    return [
        m.view_as(t) for m, t in zip(keep.split([t.numel() for t in tensors]), tensors, strict=True)
    ]


def _keep_largest(magnitude: torch.Tensor, sparsity: float) -> torch.Tensor:
    import torch

    drop = int(round(sparsity * magnitude.numel()))
    keep = torch.ones_like(magnitude, dtype=torch.bool)
    keep[torch.argsort(magnitude, stable=True)[:drop]] = False
    return keep


def _two_of_four(t: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of each 4 consecutive entries along dim 1 (the input)."""
    import torch

    moved = t.abs().movedim(1, -1)  # [out, (kh, kw,) in]
    groups = moved.reshape(*moved.shape[:-1], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(moved.shape).movedim(-1, 1)
