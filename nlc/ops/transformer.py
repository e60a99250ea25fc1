"""Transformer and modern-architecture layers, emitted as custom modules in `layers.py`."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import sympy
from pydantic import Field, ValidationInfo, field_validator

from nlc.ir.graph import Param
from nlc.ir.types import DTYPE_BYTES, Dim, TensorType, norm
from nlc.ops.base import (
    Attrs,
    Op,
    OpCost,
    ShapeError,
    concrete,
    float_input,
    kwarg,
    need_rank,
    param_bytes,
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

    @field_validator("kv_heads")
    @classmethod
    def _groups(cls, kv_heads: int | None, info: ValidationInfo) -> int | None:
        heads = info.data.get("heads")
        if kv_heads is not None and heads is not None and heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        return kv_heads


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


def _attention_macs(a, shape) -> tuple[Dim, Dim]:
    """MACs of the q/k/v and output projections, and of the scores and their weighted sum."""
    b, t, d = shape
    kv, hd = _attention_dims(a, d)
    proj = b * t * d * (a.heads + 2 * kv) * hd + b * t * a.heads * hd * d
    return proj, 2 * b * a.heads * t * t * hd


@register
class Attention(Op):
    name = "attention"
    doc = (
        "Multi-head self-attention on scaled_dot_product_attention over [B, T, D]: causal, "
        "grouped-query (kv_heads) and rotary (rope) options."
    )
    Attrs = AttentionAttrs
    layer = "Attention"
    kind = "attention"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, T, D]")
        _attention_dims(a, concrete(x.shape[2], "attention dim"))
        if a.rope and (a.head_dim or x.shape[2] // a.heads) % 2:
            raise ShapeError(
                "attention: rope needs an even head_dim",
                "choose heads (or head_dim) for an even head_dim",
            )
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
        return norm(sum(_attention_macs(a, ins[0].shape)))

    def cost(self, a, ins, outs, params, size):
        # As in the Attention layer: the qkv projection, fused scaled_dot_product_attention
        # (the T x T scores never reach memory; its output is laid out so that merging the
        # heads is a view), the output projection.
        x = ins[0]
        b, t, d = x.shape
        kv, hd = _attention_dims(a, d)
        gqa = kv != a.heads
        proj, scores = _attention_macs(a, x.shape)
        qkv = size(x.with_shape((b, t, (a.heads + 2 * kv) * hd)))
        ctx = size(x.with_shape((b, t, a.heads * hd)))  # q, and the attention output
        kvs = size(x.with_shape((b, t, kv * hd)))  # k or v before repeat_interleave
        read, written, launches = qkv + ctx, qkv + ctx, 3
        saved = ctx + b * a.heads * t * DTYPE_BYTES["f32"]  # the output and its logsumexp
        if a.rope:  # cos/sin tables, then about four passes over q and k
            read, written, launches = (
                read + 4 * (ctx + kvs),
                written + 4 * (ctx + kvs),
                launches + 17,
            )
            saved += ctx + (0 if gqa else kvs)  # rotated q and k
        if gqa:  # repeat_interleave of k and v up to `heads`
            read, written, launches = read + 2 * ctx, written + 2 * ctx, launches + 2
            saved += 2 * ctx
        if not (a.rope and gqa):  # attention reads views of the projection's output
            saved += qkv
        return OpCost(
            {"matmul": norm(2 * proj), "attention": norm(2 * scores + 5 * b * a.heads * t * t)},
            read=norm(size(x) + read),
            written=norm(size(outs[0]) + written),
            weights=param_bytes(params.values(), size),
            launches=launches,
            scratch=norm(saved),  # the temporaries are what backward keeps
            saved=norm(saved),
        )

    def module(self, a, ins, lit):
        return f"Attention({attention_args(a, ins, lit)})"


def attention_args(a, ins, lit, extra: str = "") -> str:
    """The Attention layer's arguments; `extra` keyword arguments follow `heads`."""
    out_bias = a.bias if a.out_bias is None else a.out_bias
    return (
        f"{lit(ins[0].shape[2], 'dim')}, {lit(a.heads, 'heads')}{extra}"
        f"{kwarg(lit, 'kv_heads', a.kv_heads, None)}{kwarg(lit, 'head_dim', a.head_dim, None)}"
        f"{kwarg(lit, 'bias', a.bias, True)}{kwarg(lit, 'out_bias', out_bias, a.bias)}"
        f"{kwarg(lit, 'causal', a.causal, False)}{kwarg(lit, 'rope', a.rope, False)}"
        f"{kwarg(lit, 'rope_base', a.rope_base, 10000.0)}"
        f"{kwarg(lit, 'dropout', a.dropout, 0.0)}"
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
    kind = "matmul"

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

    def cost(self, a, ins, outs, params, size):
        # Five kernels: gate, up, act, mul, down; gate, act, up and their product each make
        # one hidden-size tensor, written once and read once, and all four are kept for backward.
        x = ins[0]
        hidden = x.with_shape((*x.shape[:-1], a.hidden))
        h = size(hidden)
        return OpCost(
            {"matmul": norm(2 * self.macs(a, ins, outs)), "elementwise": norm(5 * hidden.numel())},
            read=norm(2 * size(x) + 4 * h),
            written=norm(4 * h + size(outs[0])),
            weights=param_bytes(params.values(), size),
            launches=5,
            scratch=norm(3 * h),
            saved=norm(4 * h),
        )

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
    saves = "none"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, T, D]")
        if isinstance(x.shape[1], int) and x.shape[1] > a.num:
            raise ShapeError(
                f"pos_embedding: {x.shape[1]} positions exceed num={a.num}",
                f"raise num to at least {x.shape[1]}",
            )
        return [x]

    def params(self, a, ins):
        return {
            "weight": Param((a.num, concrete(ins[0].shape[2], "pos_embedding dim")), init="normal")
        }

    def cost(self, a, ins, outs, params, size):
        # Only the first T rows of the table are read.
        rows = TensorType(ins[0].shape[1:], params["weight"].dtype)
        return replace(super().cost(a, ins, outs, params, size), weights=size(rows))

    def module(self, a, ins, lit):
        return f"PositionalEmbedding({lit(a.num, 'num_positions')}, {lit(ins[0].shape[2], 'dim')})"


@register
class ClsToken(Op):
    name = "cls_token"
    doc = "Prepends a learned class token: [B, N, D] -> [B, N + 1, D]."
    layer = "ClassToken"
    kind = "copy"
    elem_flops = 0
    saves = "none"

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
    kind = "view"  # identity at inference
    train_copy = True  # x * mask / keep, which keeps x

    def infer(self, a, ins):
        return [ins[0]]

    def module(self, a, ins, lit):
        return f"DropPath({lit(a.p, 'p')})"


@register
class SpectralMixing(Op):
    name = "spectral_mixing"
    doc = "FNet token mixing: real part of the 2-D FFT over sequence and hidden dims of [B, T, D]."
    layer = "SpectralMixing"
    kind = "fft"
    saves = "none"  # linear: backward needs no activations

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3,), self.name, "[B, T, D]")
        return [x]

    def macs(self, a, ins, outs):
        # An FFT of n points costs about n*log2(n) complex multiply-adds per transform.
        b, t, d = ins[0].shape
        return norm(b * t * d * (sympy.ceiling(sympy.log(t, 2)) + sympy.ceiling(sympy.log(d, 2))))

    def cost(self, a, ins, outs, params, size):
        # fft2 writes a complex tensor (twice the bytes); the output is a view of its real part.
        base = super().cost(a, ins, outs, params, size)
        return replace(base, written=norm(2 * base.written), scratch=base.written)

    def module(self, a, ins, lit):
        return "SpectralMixing()"
