"""Attention heads as prunable units, for the `channels` pass: their layout in the fused
weights, their importance, and their physical removal.

An `attention` node's qkv weight stacks [q heads | k heads | v heads] rows of `head_dim` each,
and its out weight takes the heads' outputs as column blocks in the q heads' order. Removing
heads changes no tensor outside the node (the model dim stays), so a head is a unit of its own
node only. With grouped-query attention (1 < kv_heads < heads) a unit is a whole group: a kv
head with the heads // kv_heads query heads that read it, so every kv head keeps the same
number of query heads (plain multi-head attention: groups of one). With a single kv head
(multi-query) the units are the query heads, and the kv head stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nlc.ir import Graph, Node
from nlc.passes.base import Weights

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HeadLayout:
    heads: int
    kv: int
    head_dim: int

    @staticmethod
    def of(graph: Graph, node: Node) -> HeadLayout:
        a = node.attrs
        dim = graph.input_types(node)[0].shape[2]
        return HeadLayout(a.heads, a.kv_heads or a.heads, a.head_dim or dim // a.heads)

    def units(self) -> list[tuple[list[int], list[int]]]:
        """(query heads, kv heads) of each unit, in head order."""
        if self.kv == 1:
            return [([h], []) for h in range(self.heads)]
        per = self.heads // self.kv
        return [(list(range(g * per, (g + 1) * per)), [g]) for g in range(self.kv)]

    def rows(self, q: list[int], kv: list[int]) -> tuple[list[int], list[int]]:
        """Rows of the qkv weight and columns of the out weight that belong to these heads."""
        hd, k0, v0 = (
            self.head_dim,
            self.heads * self.head_dim,
            (self.heads + self.kv) * self.head_dim,
        )

        def span(start: int, heads: list[int]) -> list[int]:
            return [start + h * hd + j for h in heads for j in range(hd)]

        return span(0, q) + span(k0, kv) + span(v0, kv), span(0, q)


def importance(
    weights: Weights, node: Node, layout: HeadLayout, kind: str, grads: Weights | None = None
) -> list[float]:
    """Per unit: the L1 norm (or L2 for `l2`) of its q/k/v rows and out columns together;
    `taylor`: the mean over batches of (sum of weight x gradient over those entries and the
    q/k/v bias rows)^2, `grads` holding each parameter's gradients as [batches, *shape]."""
    if kind == "taylor":
        assert grads is not None
        return _taylor(weights, grads, node, layout)
    qkv = weights[f"{node.name}.qkv.weight"].detach().double()
    out = weights[f"{node.name}.out.weight"].detach().double()
    scores = []
    for q, kv in layout.units():
        rows, cols = layout.rows(q, kv)
        parts = [qkv[rows], out[:, cols]]
        if kind == "l2":
            scores.append(float(sum(p.square().sum() for p in parts)) ** 0.5)
        else:
            scores.append(float(sum(p.abs().sum() for p in parts)))
    return scores


def _taylor(weights: Weights, grads: Weights, node: Node, layout: HeadLayout) -> list[float]:
    def product(local: str) -> torch.Tensor | None:
        key = f"{node.name}.{local}"
        if key not in grads:  # a layer without biases
            return None
        return grads[key].double() * weights[key].detach().double()  # [batches, *shape]

    qkv_w, qkv_b, out_w = product("qkv.weight"), product("qkv.bias"), product("out.weight")
    assert qkv_w is not None and out_w is not None
    scores = []
    for q, kv in layout.units():
        rows, cols = layout.rows(q, kv)
        per_batch = qkv_w[:, rows].flatten(1).sum(1) + out_w[:, :, cols].flatten(1).sum(1)
        if qkv_b is not None:
            per_batch = per_batch + qkv_b[:, rows].sum(1)
        scores.append(float(per_batch.square().mean()))
    return scores


def remove(
    graph: Graph, node: Node, weights: Weights | None, layout: HeadLayout, keep: list[int]
) -> dict[str, list[int]]:
    """Keep the units `keep` (indices into `layout.units()`) of `node`, in place: attributes
    (head_dim pinned, since its default dim // heads would change) and, given weights, the
    qkv rows and out columns. Returns the removed query and kv heads."""
    units = layout.units()
    q = [h for u in keep for h in units[u][0]]
    kv = [h for u in keep for h in units[u][1]] if layout.kv > 1 else [0]
    update = {"heads": len(q), "head_dim": layout.head_dim}
    if node.attrs.kv_heads is not None:
        update["kv_heads"] = len(kv)
    node.attrs = node.attrs.model_copy(update=update)
    if weights is not None:
        rows, cols = layout.rows(q, kv)
        _select(weights, f"{node.name}.qkv.weight", 0, rows)
        _select(weights, f"{node.name}.qkv.bias", 0, rows)
        _select(weights, f"{node.name}.out.weight", 1, cols)
    return {
        "heads": [h for h in range(layout.heads) if h not in q],
        "kv_heads": [h for h in range(layout.kv) if h not in kv],
    }


def _select(weights: Weights, key: str, dim: int, index: list[int]) -> None:
    import torch

    if key in weights:
        t: torch.Tensor = weights[key]
        weights[key] = t.index_select(dim, torch.tensor(index, dtype=torch.long)).contiguous()
