"""4-bit weight-only quantization: `quant_linear`, a linear layer whose weight is stored as
4-bit codes with one scale per group of `group_size` inputs, dequantized on the fly;
`quant_attention`, attention with its q/k/v and output projections stored so; and
`quant_embedding`, a table whose rows are stored so (groups along the embedding dim), a lookup
dequantizing only the rows it gathers.

Storage of a weight [out, in]: `qweight` uint8 [out, in / 2], two codes per byte, the even
input in the low nibble (onnxruntime's MatMulNBits order); `scales` fp16 [out, in / group],
rounded up from the exact value so that no weight falls outside the levels. A weight is
`levels[code] * scale`:
- nf4: the 16 NF4 levels of QLoRA (Dettmers et al. 2023; bitsandbytes' table), scale = the
  group's absmax;
- int4: symmetric integers, levels code - 8 in -8..7 (quantization uses -7..7), scale =
  absmax / 7.
So a group holds 4 bits a weight plus 16 bits a group: 4.25 bits a weight at group 64. The
functions here are the reference the layer template (templates/layers/QuantLinear.py) and the
ONNX rewrite (nlc.emit.onnx4bit) agree with; tests check that they do.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from nlc.ir.graph import Param
from nlc.ir.types import DTYPE_BYTES, norm
from nlc.ops.base import Attrs, ShapeError, concrete, kwarg, register
from nlc.ops.nn import Embedding, EmbeddingAttrs, Linear, PosInt
from nlc.ops.transformer import Attention, AttentionAttrs, _attention_dims, attention_args

if TYPE_CHECKING:
    import torch

Format = Literal["nf4", "int4"]
FORMATS: tuple[Format, ...] = ("nf4", "int4")
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
INT4_TOP = 7  # int4 scales map absmax to level 7: symmetric, -8 is never chosen
# Worst-case |w - dequantized w| in units of the group's absmax: half the widest level gap.
ERROR_PER_ABSMAX = {
    "nf4": max(b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:], strict=False)) / 2,
    "int4": 0.5 / INT4_TOP,
}


class FourBit(Attrs):
    format: Format = Field(default="nf4", description="nf4 (QLoRA's levels) or int4 (symmetric)")
    group_size: int = Field(
        default=64, gt=0, multiple_of=2, description="inputs sharing one scale; divides `in`"
    )


class QuantLinearAttrs(FourBit):
    out: int = PosInt
    bias: bool = True


@register
class QuantLinear(Linear):
    name = "quant_linear"
    doc = (
        "Linear layer with 4-bit (NF4 or int4) weights in groups with an fp16 scale each, "
        "dequantized on the fly: weight-only quantization."
    )
    Attrs = QuantLinearAttrs
    layer = "QuantLinear"
    elem_flops = 0

    def infer(self, a, ins):
        outs = super().infer(a, ins)
        fin = concrete(ins[0].shape[-1], f"{self.name} input features")
        check_groups(fin, a.group_size, self.name)
        return outs

    def params(self, a, ins):
        fin = concrete(ins[0].shape[-1], f"{self.name} input features")
        p = quant_params(a.out, fin, a.group_size)
        if a.bias:
            p["bias"] = Param((a.out,), init="zeros")
        return p

    def cost(self, a, ins, outs, params, size):
        # A fused 4-bit matmul (onnxruntime's MatMulNBits): it reads the packed weight and
        # scales, and spends a multiply per weight on top of the dense linear's FLOPs.
        base = super().cost(a, ins, outs, params, size)
        weights = params["qweight"].numel() * 2
        return replace(base, flops={"matmul": norm(base.flops["matmul"] + weights)})

    def module(self, a, ins, lit):
        return (
            f"QuantLinear({lit(ins[0].shape[-1], 'in_features')}, {lit(a.out, 'out_features')}"
            f"{kwarg(lit, 'format', a.format, 'nf4')}{kwarg(lit, 'group_size', a.group_size, 64)}"
            f"{kwarg(lit, 'bias', a.bias, True)})"
        )


class QuantAttentionAttrs(AttentionAttrs, FourBit):
    pass


@register
class QuantAttention(Attention):
    name = "quant_attention"
    doc = (
        "Attention whose q/k/v and output projection weights are 4-bit (NF4 or int4) in groups "
        "of inputs with an fp16 scale each, dequantized on the fly; biases stay fp32."
    )
    Attrs = QuantAttentionAttrs
    layer = "QuantAttention"

    def infer(self, a, ins):
        outs = super().infer(a, ins)
        dim = concrete(ins[0].shape[2], "attention dim")
        kv, hd = _attention_dims(a, dim)
        check_groups(dim, a.group_size, f"{self.name} qkv")
        check_groups(a.heads * hd, a.group_size, f"{self.name} out")
        return outs

    def params(self, a, ins):
        dense = super().params(a, ins)
        p: dict[str, Param] = {}
        for proj in ("qkv", "out"):
            out, features = dense[f"{proj}.weight"].shape
            p |= {f"{proj}.{k}": v for k, v in quant_params(out, features, a.group_size).items()}
            if f"{proj}.bias" in dense:
                p[f"{proj}.bias"] = dense[f"{proj}.bias"]
        return p

    def cost(self, a, ins, outs, params, size):
        # As quant_linear: a multiply per weight to dequantize, on top of the matmuls.
        base = super().cost(a, ins, outs, params, size)
        weights = sum(params[f"{p}.qweight"].numel() * 2 for p in ("qkv", "out"))
        return replace(base, flops={**base.flops, "matmul": norm(base.flops["matmul"] + weights)})

    def module(self, a, ins, lit):
        four_bit = (
            f"{kwarg(lit, 'format', a.format, 'nf4')}{kwarg(lit, 'group_size', a.group_size, 64)}"
        )
        return f"QuantAttention({attention_args(a, ins, lit, four_bit)})"


class QuantEmbeddingAttrs(EmbeddingAttrs, FourBit):
    pass


@register
class QuantEmbedding(Embedding):
    name = "quant_embedding"
    doc = (
        "Lookup table whose rows are 4-bit (NF4 or int4) in groups along the embedding dim "
        "with an fp16 scale each; a lookup dequantizes the rows it gathers."
    )
    Attrs = QuantEmbeddingAttrs
    layer = "QuantEmbedding"

    def infer(self, a, ins):
        check_groups(a.dim, a.group_size, self.name)
        return super().infer(a, ins)

    def params(self, a, ins):
        return quant_params(a.num, a.dim, a.group_size)

    def cost(self, a, ins, outs, params, size):
        # A gather of the looked-up rows' codes and scales.
        rows = ins[0].numel()
        weights = rows * (a.dim // 2 + DTYPE_BYTES["f16"] * (a.dim // a.group_size))
        return replace(super().cost(a, ins, outs, params, size), weights=norm(weights))

    def module(self, a, ins, lit):
        return (
            f"QuantEmbedding({lit(a.num, 'num_embeddings')}, {lit(a.dim, 'embedding_dim')}"
            f"{kwarg(lit, 'format', a.format, 'nf4')}{kwarg(lit, 'group_size', a.group_size, 64)}"
            f"{kwarg(lit, 'std', 1.0 if a.std is None else a.std, 1.0)})"
        )

    def init(self, a, mod, lit):
        return []  # the layer quantizes its own N(0, std^2) table


def check_groups(features: int, group_size: int, op: str) -> None:
    if features % group_size:
        fits = [g for g in (128, 64, 32, 16, 8, 4, 2) if features % g == 0]
        raise ShapeError(
            f"{op}: group_size {group_size} does not divide the {features} input features",
            f"choose a group_size that divides {features}, e.g. {fits[0]}"
            if fits
            else "two 4-bit codes share a byte: the input features must be even",
        )


def quant_params(out: int, features: int, group_size: int) -> dict[str, Param]:
    """The packed weight and its scales, frozen storage both (not trained)."""
    return {
        "qweight": Param((out, features // 2), dtype="u8"),
        "scales": Param((out, features // group_size), dtype="f16"),
    }


def levels(fmt: str, dtype=None) -> torch.Tensor:
    """The 16 values a code stands for, in units of the group's scale."""
    import torch

    # fp32 first, as the layer holds them: the NF4 table is fp32 values.
    values = NF4_LEVELS if fmt == "nf4" else range(-8, 8)
    return torch.tensor(values, dtype=torch.float32).to(dtype or torch.float32)


def quantize(weight: torch.Tensor, fmt: str, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight uint8 [out, in / 2], scales fp16 [out, in / group]) of a weight [out, in],
    computed in fp32: each weight gets the nearest level of its group."""
    import torch

    out, features = weight.shape
    groups = weight.detach().float().reshape(out, features // group_size, group_size)
    exact = groups.abs().amax(-1) / (1 if fmt == "nf4" else INT4_TOP)
    scales = exact.half()
    scales = torch.where(scales.float() < exact, torch.nextafter(scales, _inf(scales)), scales)
    scales = torch.where(exact == 0, torch.ones_like(scales), scales)
    table = levels(fmt)
    codes = torch.bucketize(groups / scales[..., None].float(), (table[1:] + table[:-1]) / 2)
    return pack(codes.reshape(out, features)), scales


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, fmt: str) -> torch.Tensor:
    """The weight [out, in] a packed weight stands for, in the scales' float dtype but at least
    fp32 (the layer computes in its own dtype: the same products, exactly)."""
    import torch

    dtype = torch.promote_types(scales.dtype, torch.float32)
    values = levels(fmt, dtype)[unpack(qweight).long()]
    groups = values.unflatten(1, (scales.shape[1], -1)) * scales[..., None].to(dtype)
    return groups.flatten(1)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [out, in] -> bytes [out, in / 2], the even input in the low nibble."""
    import torch

    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack(qweight: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.stack((qweight & 15, qweight >> 4), -1).flatten(1)


def _inf(like: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.full_like(like, float("inf"))
