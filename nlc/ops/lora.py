"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update.

`lora_linear` keeps `linear`'s `weight` and `bias` under their names, so a dense checkpoint
loads into it, and adds `lora_A [rank, in]` and `lora_B [out, rank]`:
y = x W^T + b + (alpha / rank) dropout(x) A^T B^T. The `lora` pass puts it in place of linear
layers; `lora_merge` folds the update back into a plain `linear`.

`qlora_linear` is QLoRA (Dettmers et al. 2023): the same update over a frozen 4-bit base, a
`quant_linear`'s `qweight` and `scales` (nlc.ops.quantized) in place of `weight`.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field, model_validator

from nlc.ir.graph import Param
from nlc.ir.types import norm
from nlc.ops.base import Attrs, concrete, kwarg, register
from nlc.ops.factorized import _Chain
from nlc.ops.nn import Linear, PosInt
from nlc.ops.quantized import QuantLinearAttrs, check_groups, quant_params


class LoRALinearAttrs(Attrs):
    out: int = PosInt
    bias: bool = True
    rank: int = Field(gt=0, description="rank of the update B A")
    alpha: float | None = Field(
        default=None, gt=0, description="update scale numerator (default: rank)"
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")

    @model_validator(mode="before")
    @classmethod
    def _alpha_defaults_to_rank(cls, data):
        # Filled in before validation: the attributes are frozen, and the IR prints the value.
        if isinstance(data, dict) and data.get("alpha") is None and "rank" in data:
            return {**data, "alpha": float(data["rank"])}
        return data


@register
class LoRALinear(_Chain, Linear):
    name = "lora_linear"
    doc = (
        "Linear layer with a frozen weight and a trainable low-rank update (LoRA): "
        "x W^T + b + (alpha / rank) x A^T B^T."
    )
    Attrs = LoRALinearAttrs
    layer = "LoRALinear"

    def params(self, a, ins):
        fin = concrete(ins[0].shape[-1], f"{self.name} input features")
        p = self.base_params(a, fin)
        if a.bias:
            p["bias"] = Param((a.out,), init="zeros")
        # B starts at zero: a fresh adapter leaves the base layer's outputs unchanged.
        return p | {"lora_A": Param((a.rank, fin)), "lora_B": Param((a.out, a.rank), init="zeros")}

    def base_params(self, a, fin: int) -> dict[str, Param]:
        return {"weight": Param((a.out, fin))}

    def chain(self, a, x, y):
        # The base matmul, then the adapter's two: x -> h [.., rank] -> u [.., out].
        h = x.with_shape((*x.shape[:-1], a.rank))
        layers = [
            ("matmul", y.numel() * x.shape[-1]),
            ("matmul", h.numel() * x.shape[-1]),
            ("matmul", y.numel() * a.rank),
        ]
        return layers, [h, y]

    def cost(self, a, ins, outs, params, size):
        # The chain reads x once; the adapter reads it again. Scaling u and adding it to the
        # base output is one more elementwise kernel.
        base = super().cost(a, ins, outs, params, size)
        y = outs[0]
        return replace(
            base,
            flops={**base.flops, "elementwise": norm(2 * y.numel())},
            read=norm(base.read + size(ins[0]) + size(y)),
            written=norm(base.written + size(y)),
            launches=base.launches + 1,
        )

    def module(self, a, ins, lit):
        return (
            f"LoRALinear({lit(ins[0].shape[-1], 'in_features')}, {lit(a.out, 'out_features')}, "
            f"{lit(a.rank, 'rank')}, {lit(a.alpha, 'alpha')}"
            f"{kwarg(lit, 'dropout', a.dropout, 0.0)}{kwarg(lit, 'bias', a.bias, True)})"
        )


class QLoRALinearAttrs(LoRALinearAttrs, QuantLinearAttrs):
    pass


@register
class QLoRALinear(LoRALinear):
    name = "qlora_linear"
    doc = (
        "QLoRA: a frozen 4-bit (NF4 or int4) linear layer and a trainable low-rank update: "
        "x dequant(W)^T + b + (alpha / rank) x A^T B^T."
    )
    Attrs = QLoRALinearAttrs
    layer = "QuantLinear"  # the 4-bit layer with its optional adapter

    def infer(self, a, ins):
        outs = super().infer(a, ins)
        check_groups(
            concrete(ins[0].shape[-1], f"{self.name} input features"), a.group_size, self.name
        )
        return outs

    def base_params(self, a, fin):
        return quant_params(a.out, fin, a.group_size)

    def module(self, a, ins, lit):
        return (
            f"QuantLinear({lit(ins[0].shape[-1], 'in_features')}, {lit(a.out, 'out_features')}"
            f"{kwarg(lit, 'format', a.format, 'nf4')}{kwarg(lit, 'group_size', a.group_size, 64)}"
            f"{kwarg(lit, 'bias', a.bias, True)}, rank={lit(a.rank, 'rank')}, "
            f"alpha={lit(a.alpha, 'alpha')}{kwarg(lit, 'dropout', a.dropout, 0.0)})"
        )
