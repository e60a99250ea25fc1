"""Transformer and modern-architecture layers, emitted as custom modules in `layers.py`."""

from __future__ import annotations

from typing import Literal

import sympy
from pydantic import Field, model_validator

from nlc.ir.graph import Param
from nlc.ir.types import norm
from nlc.ops.base import (
    Attrs,
    Op,
    ShapeError,
    concrete,
    float_input,
    kwarg,
    need_rank,
    register,
)


class AttentionAttrs(Attrs):
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(default=None, gt=0, description="grouped-query attention")
    head_dim: int | None = Field(default=None, gt=0, description="defaults to dim // heads")
    bias: bool = Field(default=True, description="bias on the q/k/v projection")
    out_bias: bool | None = Field(default=None, description="bias on the output projection")
    causal: bool = False
    rope: bool = Field(default=False, description="rotary position embedding on q and k")
    rope_base: float = Field(default=10000.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _groups(self):
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        return self


def _attention_dims(a, dim: int) -> tuple[int, int]:
    kv = a.kv_heads or a.heads
    if a.head_dim is not None:
        return kv, a.head_dim
    if dim % a.heads:
        raise ShapeError(
            f"attention: model dim {dim} is not divisible by heads ({a.heads})",
            "choose heads that divide the dim, or set head_dim",
        )
    return kv, dim // a.heads


@register
class Attention(Op):
    name = "attention"
    doc = (
        "Multi-head self-attention on scaled_dot_product_attention over [B, T, D]: causal, "
        "grouped-query (kv_heads) and rotary (rope) options."
    )
    Attrs = AttentionAttrs
    layer = "Attention"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, T, D]")
        _attention_dims(a, concrete(x.shape[2], "attention dim"))
        if a.rope and (a.head_dim or x.shape[2] // a.heads) % 2:
            raise ShapeError("attention: rope needs an even head_dim")
        return [x]

    def params(self, a, ins):
        dim = concrete(ins[0].shape[2], "attention dim")
        kv, hd = _attention_dims(a, dim)
        p = {"qkv.weight": Param(((a.heads + 2 * kv) * hd, dim))}
        if a.bias:
            p["qkv.bias"] = Param(((a.heads + 2 * kv) * hd,), init="zeros")
        p["out.weight"] = Param((dim, a.heads * hd))
        if a.bias if a.out_bias is None else a.out_bias:
            p["out.bias"] = Param((dim,), init="zeros")
        return p

    def macs(self, a, ins, outs):
        b, t, d = ins[0].shape
        kv, hd = _attention_dims(a, d)
        proj = b * t * d * (a.heads + 2 * kv) * hd + b * t * a.heads * hd * d
        scores = 2 * b * a.heads * t * t * hd
        return norm(proj + scores)

    def module(self, a, ins, lit):
        dim = ins[0].shape[2]
        out_bias = a.bias if a.out_bias is None else a.out_bias
        return (
            f"Attention({lit(dim, 'dim')}, {lit(a.heads, 'heads')}"
            f"{kwarg(lit, 'kv_heads', a.kv_heads, None)}{kwarg(lit, 'head_dim', a.head_dim, None)}"
            f"{kwarg(lit, 'bias', a.bias, True)}{kwarg(lit, 'out_bias', out_bias, a.bias)}"
            f"{kwarg(lit, 'causal', a.causal, False)}{kwarg(lit, 'rope', a.rope, False)}"
            f"{kwarg(lit, 'rope_base', a.rope_base, 10000.0)}"
            f"{kwarg(lit, 'dropout', a.dropout, 0.0)})"
        )


class GatedMLPAttrs(Attrs):
    hidden: int = Field(gt=0)
    act: Literal["silu", "gelu"] = Field(default="silu", description="silu: SwiGLU, gelu: GeGLU")
    bias: bool = False


@register
class GatedMLP(Op):
    name = "gated_mlp"
    doc = "Gated feed-forward down(act(gate(x)) * up(x)): SwiGLU (act: silu) or GeGLU (gelu)."
    Attrs = GatedMLPAttrs
    layer = "GatedMLP"

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        return [ins[0]]

    def params(self, a, ins):
        d = concrete(ins[0].shape[-1], "gated_mlp features")
        p = {}
        for n, shape in (("gate", (a.hidden, d)), ("up", (a.hidden, d)), ("down", (d, a.hidden))):
            p[f"{n}.weight"] = Param(shape)
            if a.bias:
                p[f"{n}.bias"] = Param((shape[0],), init="zeros")
        return p

    def macs(self, a, ins, outs):
        return norm(3 * ins[0].numel() * a.hidden)

    def module(self, a, ins, lit):
        return (
            f"GatedMLP({lit(ins[0].shape[-1], 'dim')}, {lit(a.hidden, 'hidden')}"
            f"{kwarg(lit, 'act', a.act, 'silu')}{kwarg(lit, 'bias', a.bias, False)})"
        )


class PosEmbeddingAttrs(Attrs):
    num: int = Field(gt=0, description="maximum number of positions")


@register
class PosEmbedding(Op):
    name = "pos_embedding"
    doc = "Adds a learned position embedding to [B, T, D] (T <= num)."
    Attrs = PosEmbeddingAttrs
    layer = "PositionalEmbedding"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, T, D]")
        if isinstance(x.shape[1], int) and x.shape[1] > a.num:
            raise ShapeError(f"pos_embedding: {x.shape[1]} positions exceed num={a.num}")
        return [x]

    def params(self, a, ins):
        return {
            "weight": Param((a.num, concrete(ins[0].shape[2], "pos_embedding dim")), init="normal")
        }

    def module(self, a, ins, lit):
        return f"PositionalEmbedding({lit(a.num, 'num_positions')}, {lit(ins[0].shape[2], 'dim')})"


@register
class ClsToken(Op):
    name = "cls_token"
    doc = "Prepends a learned class token: [B, N, D] -> [B, N + 1, D]."
    layer = "ClassToken"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, N, D]")
        return [x.with_shape((x.shape[0], x.shape[1] + 1, x.shape[2]))]

    def params(self, a, ins):
        return {"token": Param((1, 1, concrete(ins[0].shape[2], "cls_token dim")), init="zeros")}

    def module(self, a, ins, lit):
        return f"ClassToken({lit(ins[0].shape[2], 'dim')})"


class LayerScaleAttrs(Attrs):
    init: float = 1e-5


@register
class LayerScale(Op):
    name = "layer_scale"
    doc = "Learned per-channel scale of the last dimension (CaiT, ConvNeXt)."
    Attrs = LayerScaleAttrs
    layer = "LayerScale"

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        return [ins[0]]

    def params(self, a, ins):
        return {"gamma": Param((concrete(ins[0].shape[-1], "layer_scale dim"),), init="const")}

    def module(self, a, ins, lit):
        return f"LayerScale({lit(ins[0].shape[-1], 'dim')}{kwarg(lit, 'init', a.init, 1e-5)})"


class StochasticDepthAttrs(Attrs):
    p: float = Field(ge=0, lt=1, description="probability of dropping the whole branch")


@register
class StochasticDepth(Op):
    name = "stochastic_depth"
    doc = "Drops a residual branch per sample during training (DropPath); identity in eval."
    Attrs = StochasticDepthAttrs
    layer = "DropPath"

    def infer(self, a, ins):
        return [ins[0]]

    def module(self, a, ins, lit):
        return f"DropPath({lit(a.p, 'p')})"


@register
class SpectralMixing(Op):
    name = "spectral_mixing"
    doc = "FNet token mixing: real part of the 2-D FFT over sequence and hidden dims of [B, T, D]."
    layer = "SpectralMixing"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, T, D]")
        return [x]

    def macs(self, a, ins, outs):
        # An FFT of n points costs about n*log2(n) complex multiply-adds per transform.
        b, t, d = ins[0].shape
        return norm(b * t * d * (sympy.ceiling(sympy.log(t, 2)) + sympy.ceiling(sympy.log(d, 2))))

    def module(self, a, ins, lit):
        return "SpectralMixing()"
