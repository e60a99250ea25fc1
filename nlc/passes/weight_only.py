"""Weight-only 4-bit quantization: `nf4` and `int4` put 4-bit ops (nlc.ops.quantized) in place
of linear layers (`quant_linear`), attention (`quant_attention`: its q/k/v and output
projections) and embedding tables (`quant_embedding`: rows in groups along the embedding dim).
A linear head tied to a quantized table becomes a `quant_linear` that shares the table's codes
and scales: the tie stays a tie.

Structural mode: the generated layers quantize their own fresh init. Weight-aware: the given
weights are quantized (packed codes and fp16 scales), so the generated model computes exactly
the dense model with the dequantized weights. Embeddings are quantized by default: in a small
language model the table (and the head tied to it) is a large share of the bytes. bitsandbytes
and QLoRA keep embeddings in 16 bits by default (`embeddings: false` does so, in fp32).
Convolutions and position tables stay dense: onnxruntime has no 4-bit convolution, and a
position table is small.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nlc.analysis.compare import weight_bytes
from nlc.errors import NlcError
from nlc.ir import Graph, Node
from nlc.ops.quantized import ERROR_PER_ABSMAX, dequantize, quantize
from nlc.passes.base import PassResult, Weights, register, replace_op
from nlc.passes.decompose import attrs_for
from nlc.passes.select import Selection, selected

if TYPE_CHECKING:
    import torch

    from nlc.targets import Target

CHECK_ROWS = 16  # random inputs on which the report measures each layer's output error
CHECK_SEED = 0


# op -> (its 4-bit op, the prefixes of its dense weights)
FOUR_BIT = {
    "linear": ("quant_linear", ("",)),
    "attention": ("quant_attention", ("qkv.", "out.")),
    "embedding": ("quant_embedding", ("",)),
}


class WeightOnlyOptions(Selection):
    ops: list[Literal["linear", "attention", "embedding"]] = Field(
        default=["linear", "attention", "embedding"], description="op types to quantize"
    )
    embeddings: bool = Field(
        default=True,
        description="quantize embedding tables and the heads tied to them; false keeps them "
        "dense (as bitsandbytes and QLoRA do)",
    )
    group_size: int = Field(
        default=64,
        gt=0,
        multiple_of=2,
        description="inputs sharing one fp16 scale; must divide each layer's input features",
    )
    min_size: int = Field(
        default=4096,
        ge=0,
        description="layers with fewer weights stay dense (their scales and kernel overhead "
        "outweigh the bytes saved); a head tied to a quantized table follows the table",
    )


@register("nf4", WeightOnlyOptions)
def nf4(
    graph: Graph, weights: Weights | None, options: WeightOnlyOptions, target: Target | None = None
) -> PassResult:
    """Quantize the weights of linear, attention and embedding layers to NF4 (QLoRA's 4-bit
    normal-float levels), an fp16 absmax per group of `group_size` inputs; dequantized on the fly.

    4.25 bits a weight at group 64; onnxruntime runs the matmuls with MatMulBnb4.
    """
    return weight_only("nf4", graph, weights, options)


@register("int4", WeightOnlyOptions)
def int4(
    graph: Graph, weights: Weights | None, options: WeightOnlyOptions, target: Target | None = None
) -> PassResult:
    """Quantize the weights of linear, attention and embedding layers to symmetric int4 (-7..7
    times an fp16 scale per group of `group_size` inputs); dequantized on the fly.

    4.25 bits a weight at group 64; onnxruntime runs the matmuls with MatMulNBits and the
    lookups with GatherBlockQuantized.
    """
    return weight_only("int4", graph, weights, options)


def weight_only(
    fmt: str, graph: Graph, weights: Weights | None, options: WeightOnlyOptions
) -> PassResult:
    out = None if weights is None else dict(weights)
    ops = [op for op in options.ops if op != "embedding" or options.embeddings]
    report: list[dict[str, Any]] = []
    for node, why_not in selected(graph, options.model_copy(update={"ops": ops})):
        row: dict[str, Any] = {"pass": fmt, "node": node.name, "op": node.op}
        new_op, prefixes = FOUR_BIT[node.op]
        dense = [node.params[f"{p}weight"] for p in prefixes]
        size = sum(w.numel() for w in dense)
        if why_not is None and size < options.min_size:
            why_not = f"{size} weights, fewer than min_size {options.min_size}"
        if why_not is None and node.op == "embedding":
            why_not = _shared_with_other_than_a_linear(graph, node)
        if why_not is not None:
            report.append({**row, "skipped": why_not})
            continue
        for w in dense:
            _check_group(node, w.shape[1], options.group_size)
        before = weight_bytes(node)
        attrs = attrs_for(new_op, node, format=fmt, group_size=options.group_size)
        replace_op(graph, node, new_op, attrs)
        row |= {
            "op_after": new_op,
            "weight_bytes": before,
            "weight_bytes_after": weight_bytes(node),
        }
        if out is not None:
            row |= _quantize_weights(out, node, prefixes, fmt, options.group_size)
        report.append(row)
        if node.op == "quant_embedding":
            report.extend(_tie_heads(graph, node, out, fmt))
    return PassResult(graph, out, any("op_after" in row for row in report), report)


def _check_group(node: Node, features: int, group_size: int) -> None:
    if features % group_size:
        raise NlcError(
            f"{node.name}: group_size {group_size} does not divide its {features} input features",
            node.loc,
            "choose a group_size that divides the input features of every selected layer, "
            "or leave this layer out with `select`",
        )


def _tied_to(graph: Graph, table: Node) -> list[Node]:
    key = f"{table.name}.weight"
    return [n for n in graph if "weight" in n.params and n.params["weight"].tied_to == key]


def _shared_with_other_than_a_linear(graph: Graph, table: Node) -> str | None:
    others = [n.name for n in _tied_to(graph, table) if n.op != "linear"]
    return f"its table is shared with {', '.join(others)}" if others else None


def _tie_heads(graph: Graph, table: Node, weights: Weights | None, fmt: str) -> list[dict]:
    """Make the linear heads tied to a now 4-bit table 4-bit layers sharing its codes and
    scales (whatever the selector: a tie to a table that is gone would not build)."""
    rows = []
    for head in _tied_to(graph, table):
        attrs = attrs_for("quant_linear", head, format=fmt, group_size=table.attrs.group_size)
        replace_op(graph, head, "quant_linear", attrs)
        for k in ("qweight", "scales"):
            head.params[k] = replace(head.params[k], tied_to=f"{table.name}.{k}")
            if weights is not None:
                weights[f"{head.name}.{k}"] = weights[f"{table.name}.{k}"]
        if weights is not None:
            weights.pop(f"{head.name}.weight", None)
        rows.append(
            {
                "pass": fmt,
                "node": head.name,
                "op": "linear",
                "op_after": "quant_linear",
                "tied_to": table.name,
            }
        )
    return rows


def _quantize_weights(
    weights: Weights, node: Node, prefixes: tuple[str, ...], fmt: str, group_size: int
) -> dict[str, Any]:
    """Swap the node's dense weights for their codes and scales; the errors for the report:
    the largest over the node's weights."""
    import torch

    errors, bounds, outputs = [], [], []
    for prefix in prefixes:
        key = f"{node.name}.{prefix}weight"
        if key not in weights:
            raise NlcError(
                f"the weights have no {key!r}",
                None,
                "use the weights of this model: a state_dict of its generated Model()",
            )
        weight = weights.pop(key)
        qweight, scales = quantize(weight, fmt, group_size)
        weights[f"{node.name}.{prefix}qweight"] = qweight
        weights[f"{node.name}.{prefix}scales"] = scales
        approx = dequantize(qweight, scales, fmt).double()
        exact = weight.detach().double()
        x = torch.randn(
            CHECK_ROWS,
            exact.shape[1],
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(CHECK_SEED),
        )
        want = x @ exact.T
        errors.append(float((approx - exact).abs().max()))
        bounds.append(weight_error_bound(exact, fmt))
        outputs.append(
            float(torch.linalg.norm(x @ approx.T - want) / torch.linalg.norm(want))
            if want.any()
            else 0.0
        )
    return {
        "max_weight_error": max(errors),
        "weight_error_bound": max(bounds),
        "output_rel_error": max(outputs),
    }


def weight_error_bound(weight: torch.Tensor, fmt: str) -> float:
    """The largest |w - dequantized w| the format allows for this weight: half the widest gap
    between levels times the largest scale, the absmax rounded up to fp16 (at most one ulp:
    2^-10 relative, 2^-24 among fp16's subnormals; 2^-9 leaves room for fp32 rounding)."""
    absmax = float(weight.abs().max())
    return ERROR_PER_ABSMAX[fmt] * absmax * (1 + 2**-9) + 2**-25
