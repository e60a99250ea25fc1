"""LoRA adapters: `lora` puts `lora_linear` in place of linear layers (`qlora_linear` in place
of 4-bit `quant_linear` ones: QLoRA), `lora_merge` folds the trained update back into a plain
`linear` for inference."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nlc.errors import NlcError
from nlc.ir import Graph, Node
from nlc.ops.quantized import dequantize
from nlc.passes.base import PassResult, Weights, register, replace_op
from nlc.passes.decompose import attrs_for
from nlc.passes.select import Selection, selected

if TYPE_CHECKING:
    from nlc.targets import Target

ADAPTERS = ("lora_A", "lora_B")
ADAPTED = {"linear": "lora_linear", "quant_linear": "qlora_linear"}  # op -> its adapted op


class LoraOptions(Selection):
    ops: list[Literal["linear", "quant_linear"]] = Field(
        default=["linear", "quant_linear"],
        description="op types to adapt (a 4-bit quant_linear gets a QLoRA adapter)",
    )
    rank: int = Field(default=8, gt=0, description="rank of each update B A")
    alpha: float | None = Field(
        default=None, gt=0, description="the update is scaled by alpha / rank (default: rank)"
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapters' input")


class MergeOptions(Selection):
    ops: list[Literal["lora_linear", "qlora_linear"]] = Field(
        default=["lora_linear", "qlora_linear"], description="op types to merge"
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
    A 4-bit `quant_linear` (passes nf4, int4) becomes `qlora_linear`: QLoRA, its packed base
    frozen.
    """
    out = None if weights is None else dict(weights)
    report: list[dict[str, Any]] = []
    for node, why_not in selected(graph, options):
        row: dict[str, Any] = {"pass": "lora", "node": node.name, "op": node.op}
        if why_not is not None:
            report.append({**row, "skipped": why_not})
            continue
        op = ADAPTED[node.op]
        attrs = attrs_for(op, node, rank=options.rank, alpha=options.alpha, dropout=options.dropout)
        before = node.num_params()  # selection skips tied linears
        replace_op(graph, node, op, attrs)
        if out is not None:
            out |= _adapters(
                node.name,
                node.params["lora_B"].shape[0],
                node.params["lora_A"].shape[1],
                _float_dtype(out, node),
                options.rank,
            )
        adapters = sum(node.params[k].numel() for k in ADAPTERS)
        report.append({**row, "op_after": node.op, "params": before, "trainable": adapters})
    _summarize(graph, report)
    return PassResult(graph, out, any("op_after" in row for row in report), report)


@register("lora_merge", MergeOptions)
def lora_merge(
    graph: Graph, weights: Weights | None, options: MergeOptions, target: Target | None = None
) -> PassResult:
    """Fold LoRA adapters into their base layers: W + (alpha / rank) B A, a plain `linear`.

    A QLoRA layer becomes a dense `linear` too, dequant(W) + (alpha / rank) B A in fp32: exact,
    where quantizing again would add the 4-bit error a second time (run nf4 after the merge for
    a 4-bit inference model). Without weights only the op changes back (a fresh init).
    """
    out = None if weights is None else dict(weights)
    report: list[dict[str, Any]] = []
    for node, _ in selected(graph, options):
        a, op = node.attrs, node.op
        replace_op(graph, node, "linear", attrs_for("linear", node))
        if out is not None:
            base = ("weight",) if op == "lora_linear" else ("qweight", "scales")
            keys = [f"{node.name}.{k}" for k in (*base, *ADAPTERS)]
            if any(k not in out for k in keys):
                raise NlcError(
                    f"the weights have no {' or '.join(repr(k) for k in keys if k not in out)}",
                    None,
                    "use the weights of this model: a state_dict of its generated Model()",
                )
            tensors = [out.pop(k) for k in keys]
            lora_a, lora_b = tensors[-2:]
            w = tensors[0] if op == "lora_linear" else dequantize(*tensors[:2], a.format)
            update = (lora_b.double() @ lora_a.double()) * (a.alpha / a.rank)
            out[f"{node.name}.weight"] = (w.double() + update).to(w.dtype)
        row = {"pass": "lora_merge", "node": node.name, "op": op, "op_after": "linear"}
        report.append(row)
    return PassResult(graph, out, bool(report), report)


def _adapters(name: str, out: int, features: int, dtype, rank: int) -> Weights:
    """A fresh adapter for a weight [out, features]: A kaiming-uniform, B zero, in `dtype`."""
    import torch

    # crc32, not hash(): Python salts string hashes per process.
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    lora_a = torch.empty(rank, features, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(lora_a, a=5**0.5, generator=gen)
    lora_b = torch.zeros(out, rank, dtype=dtype)
    return {f"{name}.lora_A": lora_a.to(dtype), f"{name}.lora_B": lora_b}


def _float_dtype(weights: Weights, node: Node):
    """The dtype the node's adapters take: its dense weight's, else (4-bit base) fp32."""
    import torch

    weight = weights.get(f"{node.name}.weight")
    return torch.float32 if weight is None else weight.dtype


def _summarize(graph: Graph, report: list[dict[str, Any]]) -> None:
    """Add the model's trainable fraction to every adapted row: LoRA layers train only their
    adapters; other layers' parameters stay trainable."""
    total = graph.num_params()
    frozen = sum(
        p.numel()
        for node in graph
        if node.op in ADAPTED.values()
        for k, p in node.params.items()
        if k not in ADAPTERS
    )
    for row in report:
        if "op_after" in row:
            row["trainable_fraction"] = (total - frozen) / total
