"""LoRA adapters: `lora` puts `lora_linear` in place of linear layers, `lora_merge` folds the
trained update back into a plain `linear` for inference."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nlc.errors import NlcError
from nlc.ir import Graph
from nlc.passes.base import PassResult, Weights, register, replace_op
from nlc.passes.decompose import attrs_for
from nlc.passes.select import Selection, selected

if TYPE_CHECKING:
    from nlc.targets import Target

ADAPTERS = ("lora_A", "lora_B")


class LoraOptions(Selection):
    ops: list[Literal["linear"]] = Field(default=["linear"], description="op types to adapt")
    rank: int = Field(default=8, gt=0, description="rank of each update B A")
    alpha: float | None = Field(
        default=None, gt=0, description="the update is scaled by alpha / rank (default: rank)"
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapters' input")


class MergeOptions(Selection):
    ops: list[Literal["lora_linear"]] = Field(
        default=["lora_linear"], description="op types to merge"
    )


@register("lora", LoraOptions)
def lora(
    graph: Graph, weights: Weights | None, options: LoraOptions, target: Target | None = None
) -> PassResult:
    """Add LoRA adapters (Hu et al. 2021) to linear layers: the base weight is frozen, and
    only a rank-`rank` update (alpha / rank) B A trains.

    With weights, the base weight and bias are kept as they are, A is drawn kaiming-uniform
    (as PEFT does; seeded by the node's name, so builds are deterministic) and B is zero, so
    the adapted model starts with the base model's outputs. Shared (tied) weights are skipped.
    """
    out = None if weights is None else dict(weights)
    report: list[dict[str, Any]] = []
    for node, why_not in selected(graph, options):
        row: dict[str, Any] = {"pass": "lora", "node": node.name, "op": node.op}
        if why_not is not None:
            report.append({**row, "skipped": why_not})
            continue
        attrs = attrs_for(
            "lora_linear", node, rank=options.rank, alpha=options.alpha, dropout=options.dropout
        )
        before = node.num_params()  # selection skips tied linears
        replace_op(graph, node, "lora_linear", attrs)
        if out is not None:
            out |= _adapters(node.name, out[f"{node.name}.weight"], options.rank)
        adapters = sum(node.params[k].numel() for k in ADAPTERS)
        report.append({**row, "op_after": node.op, "params": before, "trainable": adapters})
    _summarize(graph, report)
    return PassResult(graph, out, any("op_after" in row for row in report), report)


@register("lora_merge", MergeOptions)
def lora_merge(
    graph: Graph, weights: Weights | None, options: MergeOptions, target: Target | None = None
) -> PassResult:
    """Fold LoRA adapters into their base layers: W + (alpha / rank) B A, a plain `linear`.

    Without weights only the op changes back (the model starts from a fresh init).
    """
    out = None if weights is None else dict(weights)
    report: list[dict[str, Any]] = []
    for node, _ in selected(graph, options):
        a = node.attrs
        replace_op(graph, node, "linear", attrs_for("linear", node))
        if out is not None:
            keys = [f"{node.name}.{k}" for k in ("weight", *ADAPTERS)]
            if any(k not in out for k in keys):
                raise NlcError(
                    f"the weights have no {' or '.join(repr(k) for k in keys if k not in out)}",
                    None,
                    "use the weights of this model: a state_dict of its generated Model()",
                )
            w, lora_a, lora_b = out[keys[0]], out.pop(keys[1]), out.pop(keys[2])
            update = (lora_b.double() @ lora_a.double()) * (a.alpha / a.rank)
            out[keys[0]] = (w.double() + update).to(w.dtype)
        row = {"pass": "lora_merge", "node": node.name, "op": "lora_linear", "op_after": "linear"}
        report.append(row)
    return PassResult(graph, out, bool(report), report)


def _adapters(name: str, weight, rank: int) -> Weights:
    """A fresh adapter for `weight` [out, in]: A kaiming-uniform, B zero, in its dtype."""
    import torch

    # crc32, not hash(): Python salts string hashes per process.
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    lora_a = torch.empty(rank, weight.shape[1], dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(lora_a, a=5**0.5, generator=gen)
    lora_b = torch.zeros(weight.shape[0], rank, dtype=weight.dtype)
    return {f"{name}.lora_A": lora_a.to(weight.dtype), f"{name}.lora_B": lora_b}


def _summarize(graph: Graph, report: list[dict[str, Any]]) -> None:
    """Add the model's trainable fraction to every adapted row: LoRA layers train only their
    adapters; other layers' parameters stay trainable."""
    total = graph.num_params()
    frozen = sum(
        p.numel()
        for node in graph
        if node.op == "lora_linear"
        for k, p in node.params.items()
        if k not in ADAPTERS
    )
    for row in report:
        if "op_after" in row:
            row["trainable_fraction"] = (total - frozen) / total
