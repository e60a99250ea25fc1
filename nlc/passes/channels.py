"""Structured pruning: remove whole output channels of conv and linear layers, with every
layer their channels reach (residual adds, norms, depthwise convs, concats, consumers), and
whole heads of attention layers (`ops: [attention]`; their layout is `nlc.passes.heads`).

`importance: taylor` (Molchanov et al. 2019) scores a channel by the first-order Taylor estimate
of the loss change when it goes: per batch, the sum of weight x gradient over every parameter
removed with it (its rows in the producers, depthwise convs and norms of its group), squared,
then averaged over the batches. The gradients come in `graph.meta["gradients"]` (name ->
[batches, *shape], `nlc.emit.gradients`), which `nlc.api.compress` puts there for the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nlc.errors import NlcError
from nlc.ir import Graph, Node
from nlc.ir.graph import Value
from nlc.passes.base import PassResult, Weights, register
from nlc.passes.heads import HeadLayout, importance, remove
from nlc.passes.reinfer import interface, keep_interface, reinfer
from nlc.passes.select import Selection, selected

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target

# Ops that map each channel to itself, wherever the channel axis is (f(0) = 0 for these
# activations, so a zeroed channel stays zero; sigmoid is left out: sigmoid(0) = 0.5).
_SAME = {"relu", "relu6", "silu", "tanh", "hardswish", "gelu", "dropout"}
_POOLS = {"maxpool2d", "avgpool2d", "adaptive_avgpool2d", "global_avgpool"}
_BN = {"batchnorm1d", "batchnorm2d"}
_CONVS = {"conv1d", "conv2d"}


class ChannelsOptions(Selection):
    ops: list[Literal["conv2d", "conv1d", "linear", "attention"]] = Field(
        default=["conv2d", "linear"],
        description="op types whose output channels are pruned; attention: its heads (whole "
        "kv groups under grouped-query attention)",
    )
    amount: float = Field(
        default=0.5, ge=0, lt=1, description="fraction of each group's channels (or heads) removed"
    )
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        default="l1",
        description="channel score: norm of the producing weight rows, |gamma| of the "
        "BatchNorm after the layer (l1 where there is none), or taylor: (sum of weight x loss "
        "gradient over the channel's parameters)^2 on batches of the train section's data "
        "(needs --weights); heads: the same over their q/k/v rows and out columns",
    )
    round_to: int = Field(
        default=1, gt=0, description="keep channel (and head) counts a multiple of this"
    )


@dataclass(frozen=True)
class _Site:
    """Where a value's tracked channels lie: channel i spans indices [i*block, (i+1)*block)
    of dim `axis` (block > 1 after a flatten of [C, H, W])."""

    axis: int
    block: int
    chans: tuple[int, ...]


@dataclass(frozen=True)
class _Cut:
    """Entries of one node's tensors that follow channels: `locals` along `dim`."""

    locals: tuple[str, ...]
    dim: int
    site: _Site
    out: bool  # the node's own output channels (producers, depthwise, norms)


@dataclass
class _Analysis:
    parent: list[int] = field(default_factory=list)
    sites: dict[Value, _Site] = field(default_factory=dict)
    owned: dict[str, tuple[int, ...]] = field(default_factory=dict)  # producer -> channel ids
    blocked: dict[int, str] = field(default_factory=dict)  # channel id -> why
    cuts: dict[str, list[_Cut]] = field(default_factory=dict)
    groupnorms: list[tuple[_Site, int]] = field(default_factory=list)
    bn_after: dict[str, str] = field(default_factory=dict)  # producer -> its BatchNorm

    def find(self, c: int) -> int:
        while self.parent[c] != c:
            self.parent[c] = self.parent[self.parent[c]]
            c = self.parent[c]
        return c

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def fresh(self, n: int) -> tuple[int, ...]:
        start = len(self.parent)
        self.parent += range(start, start + n)
        return tuple(range(start, start + n))

    def block(self, site: _Site | None, why: str) -> None:
        if site is not None:
            for c in site.chans:
                self.blocked.setdefault(c, why)

    def cut(self, node: Node, locals_: tuple[str, ...], dim: int, site: _Site, out: bool):
        self.cuts.setdefault(node.name, []).append(_Cut(locals_, dim, site, out))


@register("channels", ChannelsOptions)
def channels(
    graph: Graph, weights: Weights | None, options: ChannelsOptions, target: Target | None = None
) -> PassResult:
    """Remove the least important output channels of conv and linear layers, physically.

    Channels tied by residual adds (through activations, norms, depthwise convs and concats)
    form a group pruned as one; a channel's importance is the sum over its producers. Groups
    that reach a model output, an op whose channel layout cannot be followed (reshape,
    permute, attention, ...), a model input or a tied weight are skipped, and the report says
    why. Without weights (structural mode) importance is undefined: the last channels of each
    group go, deterministically. Attention heads leave no trace outside their node (the model
    dim stays), so each attention layer is a group of its own.
    """
    before = interface(graph)
    out = None if weights is None else dict(weights)
    grads = _gradients(graph, weights, options)
    report, heads_pruned = _heads(graph, out, options, grads)
    producers, rows = _producers(graph, options)
    report += rows
    a = _analyse(graph, producers)
    removed: set[int] = set()
    for group, units in _groups(a):
        row, drop = _plan(a, weights, grads, options, group, units)
        report.append(row)
        removed |= drop
    if not removed and not heads_pruned:
        return PassResult(graph, out, False, report)
    for name, cuts in a.cuts.items():
        node = graph.nodes[name]
        for cut in cuts:
            keep = [i for i, c in enumerate(cut.site.chans) if a.find(c) not in removed]
            if cut.out and node.op in _CONVS | {"linear"}:
                grouped = node.op in _CONVS and node.attrs.groups > 1
                update = {"out": len(keep), **({"groups": len(keep)} if grouped else {})}
                node.attrs = node.attrs.model_copy(update=update)
            if out is not None:
                _slice(out, node, cut, keep)
    reinfer(graph)
    keep_interface(graph, before)
    return PassResult(graph, out, True, report)


def _gradients(graph: Graph, weights: Weights | None, options: ChannelsOptions) -> Weights | None:
    """The loss gradients Taylor importance needs (None for other importances and without
    weights, where importance is not computed)."""
    if options.importance != "taylor" or weights is None:
        return None
    grads = graph.meta.get("gradients")
    if grads is None:
        raise NlcError(
            "importance 'taylor' needs the loss gradients on the training data",
            None,
            "run the pass through `nlc build --weights` or nlc.api.compress, which compute them "
            "from the spec's train section",
        )
    return grads


def _producers(graph: Graph, options: ChannelsOptions) -> tuple[set[str], list[dict[str, Any]]]:
    """The selected layers whose output channels may go, and report rows for the others."""
    shared = {p.tied_to.rsplit(".", 1)[0] for _, p in graph.parameters() if p.tied_to}
    names, rows = set(), []
    for node, _ in selected(graph, options):  # the decomposition reasons do not apply here
        if node.op == "attention":
            continue
        if node.name in shared or node.params["weight"].tied_to:
            why = "tied weight"
        elif node.op in _CONVS and node.attrs.groups > 1:
            why = f"grouped convolution (groups={node.attrs.groups}): its channels follow its input"
        else:
            names.add(node.name)
            continue
        rows.append({"pass": "channels", "node": node.name, "op": node.op, "skipped": why})
    return names, rows


def _analyse(graph: Graph, producers: set[str]) -> _Analysis:
    """Follow channels forward from the producers, in topological order."""
    a = _Analysis()
    shared = {p.tied_to.rsplit(".", 1)[0] for _, p in graph.parameters() if p.tied_to}
    for node in graph:
        ins = [a.sites.get(v) for v in node.inputs]
        x = ins[0] if ins else None
        rank = node.type.rank
        why = f"it feeds {node.op} {node.name!r}"
        site: _Site | None = None
        if node.op in _CONVS | {"linear"}:
            axis = rank - 1 if node.op == "linear" else 1
            depthwise = node.op in _CONVS and node.attrs.groups > 1
            if (
                depthwise
                and node.attrs.groups == node.attrs.out == graph.input_types(node)[0].shape[1]
            ):
                if x is not None and x.axis == 1 and x.block == 1:
                    site = x
                    a.cut(node, ("weight", "bias"), 0, x, out=True)
                else:
                    a.block(x, why)
            elif x is not None:
                if (
                    depthwise
                    or x.axis != axis
                    or node.name in shared
                    or node.params["weight"].tied_to
                ):
                    a.block(x, why)
                elif x.block == 1 or node.op == "linear":
                    a.cut(node, ("weight",), 1, x, out=False)
                else:
                    a.block(x, why)
            if node.name in producers:
                site = _Site(axis, 1, a.fresh(node.attrs.out))
                a.owned[node.name] = site.chans
                a.cut(node, ("weight", "bias"), 0, site, out=True)
        elif node.op in _BN | {"layernorm", "groupnorm"}:
            axis = rank - 1 if node.op == "layernorm" else 1
            if x is not None and x.axis == axis and x.block == 1:
                site = x
                stats = ("running_mean", "running_var") if node.op in _BN else ()
                a.cut(node, ("weight", "bias", *stats), 0, x, out=True)
                if node.op == "groupnorm":
                    a.groupnorms.append((x, node.attrs.groups))
                if node.op in _BN and node.inputs[0].node in producers:
                    a.bn_after[node.inputs[0].node] = node.name
            else:
                a.block(x, why)
        elif node.op in _SAME or (node.op in _POOLS and x is not None and x.axis == 1):
            site = x
        elif node.op in ("add", "mul", "concat"):
            site = _merge(a, node, ins, graph)
        elif node.op == "flatten" and x is not None:
            site = _flatten(node, x, graph)
            if site is None:
                a.block(x, why)
        else:
            for s in ins:
                a.block(s, why)
        if site is not None:
            a.sites[Value(node.name)] = site
    for v in graph.outputs.values():
        a.block(a.sites.get(v), "it is a model output")
    return a


def _merge(a: _Analysis, node: Node, ins: list[_Site | None], graph: Graph) -> _Site | None:
    """add/mul tie channel i of every input; concat along the channel axis lays them end to
    end. Anything else (an untracked or broadcast input, another axis) blocks the inputs."""
    out_t = node.type
    first = ins[0]
    ok = first is not None and all(
        s is not None and s.axis == first.axis and s.block == first.block for s in ins
    )
    ok = ok and all(t.rank == out_t.rank for t in graph.input_types(node))
    if ok and node.op == "concat":
        if node.attrs.dim % out_t.rank == first.axis:
            return _Site(first.axis, first.block, sum((s.chans for s in ins), ()))
    elif ok and all(len(s.chans) == len(first.chans) for s in ins):
        if all(t.shape[first.axis] == out_t.shape[first.axis] for t in graph.input_types(node)):
            for s in ins[1:]:
                for c, d in zip(first.chans, s.chans, strict=True):
                    a.union(c, d)
            return first
    for s in ins:
        a.block(s, f"it feeds {node.op} {node.name!r} with inputs whose channels do not line up")
    return None


def _flatten(node: Node, x: _Site, graph: Graph) -> _Site | None:
    """flatten(start..end) keeps the channel axis outside the merged dims and multiplies the
    block when the channel axis is the first merged one (inner sizes must be known)."""
    shape = graph.input_types(node)[0].shape
    s, e = node.attrs.start % len(shape), node.attrs.end % len(shape)
    if x.axis < s:
        return x
    if x.axis > e:
        return _Site(x.axis - (e - s), x.block, x.chans)
    inner = shape[s + 1 : e + 1]
    if x.axis == s and all(isinstance(d, int) for d in inner):
        return _Site(s, x.block * math.prod(inner), x.chans)
    return None


def _groups(a: _Analysis) -> list[tuple[list[str], list[int]]]:
    """(producer names, unit roots in order) of each group: producers sharing a channel."""
    owner: dict[int, int] = {}  # root -> index of its group
    groups: list[tuple[list[str], list[int]]] = []
    for name, ids in a.owned.items():
        hit = sorted({owner[a.find(c)] for c in ids if a.find(c) in owner})
        if hit:
            keep, *rest = hit
            for r in rest:  # this producer joins groups found apart so far
                groups[keep][0].extend(groups[r][0])
                groups[keep][1].extend(groups[r][1])
                for u in groups[r][1]:
                    owner[u] = keep
                groups[r] = ([], [])
        else:
            keep = len(groups)
            groups.append(([], []))
        groups[keep][0].append(name)
        for c in ids:
            root = a.find(c)
            if root not in owner:
                owner[root] = keep
                groups[keep][1].append(root)
    return [g for g in groups if g[0]]


def _plan(a: _Analysis, weights, grads, options, producers, units):
    """The report row of one group and the unit roots it removes."""
    unit_set = set(units)
    members = {
        name: cut.site.chans
        for name, cuts in a.cuts.items()
        for cut in cuts
        if cut.out and any(a.find(c) in unit_set for c in cut.site.chans)
    }
    n = len(units)
    row: dict[str, Any] = {"pass": "channels", "group": producers[0], "members": list(members)}
    row["channels"] = n
    why = next((w for c, w in a.blocked.items() if a.find(c) in unit_set), None)
    multiple = options.round_to
    for site, groups in a.groupnorms:
        roots = {a.find(c) for c in site.chans}
        if roots & unit_set:
            if roots != unit_set or len(site.chans) != n:
                why = why or "a groupnorm spans channels of other groups"
            multiple = math.lcm(multiple, groups)
    if why is not None:
        return {**row, "skipped": why}, set()
    kept = _kept(n, options.amount, multiple)
    if weights is None:
        row["importance"] = "none (structural mode: the last channels go)"
        order = units[::-1]
    elif grads is not None:
        row["importance"] = "taylor"
        score = _taylor(a, weights, grads, unit_set)
        order = sorted(units, key=lambda u: score[u])
    else:
        score = {u: 0.0 for u in units}
        fallback = []
        for p in producers:
            rows = _importance(weights, p, a.bn_after.get(p), options.importance)
            if options.importance == "bn_scale" and p not in a.bn_after:
                fallback.append(p)
            for c, s in zip(a.owned[p], rows.tolist(), strict=True):
                score[a.find(c)] += s
        row["importance"] = options.importance + (
            f" (l1 for {', '.join(fallback)}: no BatchNorm follows)" if fallback else ""
        )
        order = sorted(units, key=lambda u: score[u])  # stable: ties go in channel order
    drop = _drop(a, order, n - kept, members.values())
    row["channels_after"] = n - len(drop)
    # Which output channels of each member go: what zeroing them in the dense model means.
    row["removed"] = {
        name: [i for i, c in enumerate(chans) if a.find(c) in drop]
        for name, chans in members.items()
    }
    return row, drop


def _kept(n: int, amount: float, multiple: int) -> int:
    """How many of `n` units stay: amount x n go (rounded down), the rest rounded up to a
    multiple, never more than n."""
    return min(n, -(-(n - int(amount * n)) // multiple) * multiple)


def _heads(
    graph: Graph, weights: Weights | None, options: ChannelsOptions, grads: Weights | None
) -> tuple[list[dict[str, Any]], bool]:
    """Remove the least important heads of the selected attention layers, in place (weights
    too); the report rows, and whether any head went."""
    rows, changed = [], False
    for node, _ in selected(graph, options):
        if node.op != "attention":
            continue
        row: dict[str, Any] = {"pass": "channels", "node": node.name, "op": "attention"}
        if any(p.tied_to for p in node.params.values()):
            rows.append({**row, "skipped": "tied weight"})
            continue
        layout = HeadLayout.of(graph, node)
        n = len(layout.units())
        row |= {"units": "heads" if layout.kv in (1, layout.heads) else "kv groups"}
        row |= {"heads": layout.heads, "kv_heads": layout.kv}
        kept = _kept(n, options.amount, options.round_to)
        if weights is None:
            row["importance"] = "none (structural mode: the last heads go)"
            order = list(range(n))[::-1]
        else:
            kind = "l1" if options.importance == "bn_scale" else options.importance
            row["importance"] = options.importance
            if options.importance == "bn_scale":
                row["importance"] = "l1 (bn_scale: heads have no BatchNorm)"
            scores = importance(weights, node, layout, kind, grads)
            order = sorted(range(n), key=scores.__getitem__)  # stable: ties in head order
        gone = {"heads": [], "kv_heads": []}
        if options.amount > 0:  # the same attrs for every instance of a block, pruned or not
            node.attrs = node.attrs.model_copy(update={"head_dim": layout.head_dim})
        if kept < n:
            gone = remove(graph, node, weights, layout, sorted(order[n - kept :]))
            changed = True
        a = node.attrs
        rows.append(
            {
                **row,
                "heads_after": a.heads,
                "kv_heads_after": a.kv_heads or a.heads,
                "removed_heads": gone,
            }
        )
    return rows, changed


def _drop(a: _Analysis, order: list[int], count: int, members) -> set[int]:
    """The first `count` units of `order` whose removal leaves every member a channel (a
    concat's input can hold fewer channels than the group)."""
    left = [[a.find(c) for c in chans] for chans in members]
    drop: set[int] = set()
    for u in order:
        if len(drop) == count:
            break
        if all(any(r != u and r not in drop for r in roots) for roots in left):
            drop.add(u)
    return drop


def _importance(weights: Weights, producer: str, bn: str | None, kind: str) -> torch.Tensor:
    if kind == "bn_scale" and bn is not None:
        return weights[f"{bn}.weight"].detach().abs().double()
    rows = weights[f"{producer}.weight"].detach().double().flatten(1)
    return rows.norm(dim=1) if kind == "l2" else rows.abs().sum(1)


def _taylor(a: _Analysis, weights: Weights, grads: Weights, units: set[int]) -> dict[int, float]:
    """Per unit root: the mean over batches of (sum of weight x gradient over the entries of
    every output-side cut that follows the unit)^2. Buffers (running stats) have no gradient."""
    per_batch: dict[int, torch.Tensor] = {}
    for name, cuts in a.cuts.items():
        for cut in cuts:
            if not cut.out:
                continue
            for local in cut.locals:
                key = f"{name}.{local}"
                if key not in grads:
                    continue
                product = grads[key].double() * weights[key].detach().double()
                product = product.movedim(cut.dim + 1, 1)
                # [batches, channels]: entries of other dims, and each channel's block, summed
                sums = product.reshape(*product.shape[:2], -1).sum(2)
                sums = sums.unflatten(1, (-1, cut.site.block)).sum(2)
                for i, c in enumerate(cut.site.chans):
                    u = a.find(c)
                    if u in units:
                        per_batch[u] = per_batch.get(u, 0) + sums[:, i]
    return {u: float(per_batch[u].square().mean()) if u in per_batch else 0.0 for u in units}


def _slice(weights: Weights, node: Node, cut: _Cut, keep: list[int]) -> None:
    import torch

    block = cut.site.block
    index = torch.tensor([i * block + j for i in keep for j in range(block)], dtype=torch.long)
    for local in cut.locals:
        key = f"{node.name}.{local}"
        if key in weights:
            weights[key] = weights[key].index_select(cut.dim, index).contiguous()
