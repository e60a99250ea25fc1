"""Ops with parameters that map onto `torch.nn` modules."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import sympy
from pydantic import Field

from nlc.ir.graph import Param
from nlc.ir.types import DTYPE_BYTES, TensorType, norm, prod
from nlc.ops.base import (
    Attrs,
    Lit,
    Op,
    ShapeError,
    concrete,
    float_input,
    kwarg,
    need_rank,
    register,
)

PosInt = Field(gt=0)


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


class LinearAttrs(Attrs):
    out: int = PosInt
    bias: bool = True
    tie: str | None = Field(
        default=None, description="name of an embedding or linear whose weight this layer shares"
    )


@register
class Linear(Op):
    name = "linear"
    doc = "Affine map over the last dimension (`nn.Linear`); `tie` shares another node's weight."
    Attrs = LinearAttrs
    kind = "matmul"
    elem_flops = 0

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        if x.rank < 1:
            raise ShapeError(
                f"linear needs at least one dimension, got {x}", "feed it a [..., features] tensor"
            )
        return [x.with_shape((*x.shape[:-1], a.out))]

    def params(self, a, ins):
        fin = concrete(ins[0].shape[-1], "linear input features")
        p = {"weight": Param((a.out, fin))}
        if a.bias:
            p["bias"] = Param((a.out,), init="zeros")
        return p

    def macs(self, a, ins, outs):
        return norm(outs[0].numel() * ins[0].shape[-1])

    def module(self, a, ins, lit):
        fin = ins[0].shape[-1]
        return (
            f"nn.Linear({lit(fin, 'in_features')}, {lit(a.out, 'out_features')}"
            f"{kwarg(lit, 'bias', a.bias, True)})"
        )


class ConvGeometry(Attrs):
    """What fixes a convolution's output shape; factorized convolutions share it."""

    out: int = PosInt
    kernel: int | list[int]
    stride: int | list[int] = 1
    padding: int | list[int] | Literal["same", "valid"] = 0
    dilation: int | list[int] = 1


class ConvAttrs(ConvGeometry):
    groups: int = Field(default=1, gt=0)
    bias: bool = True


def geometry_kwargs(lit: Lit, a: ConvGeometry) -> str:
    """The stride, padding and dilation keywords of an `nn.Conv*d`, where not the default."""
    return (
        f"{kwarg(lit, 'stride', a.stride, 1)}{kwarg(lit, 'padding', a.padding, 0)}"
        f"{kwarg(lit, 'dilation', a.dilation, 1)}"
    )


class _Conv(Op):
    spatial: int
    Attrs = ConvAttrs
    kind = "conv"
    elem_flops = 0

    def op_class(self, a, ins):
        # One filter per channel: little reuse per byte, and no tensor-core path.
        return "depthwise" if a.groups > 1 and a.groups == ins[0].shape[1] else "conv"

    def _geometry(self, a):
        n = self.spatial
        k, s, d = _tuple(a.kernel, n), _tuple(a.stride, n), _tuple(a.dilation, n)
        for what, v in (("kernel", k), ("stride", s), ("dilation", d)):
            if len(v) != n or any(x <= 0 for x in v):
                raise ShapeError(
                    f"{self.name}: {what} must be {n} positive integer(s), got {v}",
                    f"write one number for all {n} dims or a list of {n}",
                )
        if a.padding == "valid":
            p = (0,) * n
        elif a.padding == "same":
            if any(x != 1 for x in s):
                raise ShapeError(
                    f"{self.name}: padding 'same' needs stride 1, got stride {a.stride}",
                    "give explicit padding, e.g. padding: ${kernel // 2}",
                )
            p = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d, strict=True))
        else:
            p = _tuple(a.padding, n)
            if len(p) != n or any(x < 0 for x in p):
                raise ShapeError(
                    f"{self.name}: padding must be {n} non-negative integer(s), got {a.padding}",
                    f"write one number for all {n} dims, a list of {n}, 'same' or 'valid'",
                )
        return k, s, p, d

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        n = self.spatial
        layout = "[B, C, L]" if n == 1 else "[B, C, H, W]"
        need_rank(x, (n + 2,), self.name, layout)
        cin = x.shape[1]
        if isinstance(cin, int) and (cin % a.groups or a.out % a.groups):
            raise ShapeError(
                f"{self.name}: in channels ({cin}) and out ({a.out}) must both be divisible by "
                f"groups ({a.groups})",
                "choose groups that divide both; depthwise is groups = in channels",
            )
        k, s, p, d = self._geometry(a)
        if a.padding == "same":
            spatial = x.shape[2:]
        else:
            spatial = []
            for size, kk, ss, pp, dd in zip(x.shape[2:], k, s, p, d, strict=True):
                span = size + 2 * pp - dd * (kk - 1) - 1
                if isinstance(span, int):
                    if span < 0:
                        raise ShapeError(
                            f"{self.name}: kernel {kk} (dilation {dd}) is larger than the padded "
                            f"input size {size + 2 * pp}",
                            "use a smaller kernel or more padding, or downsample less before it",
                        )
                    spatial.append(span // ss + 1)
                else:
                    spatial.append(sympy.floor(span / ss) + 1)
        return [x.with_shape((x.shape[0], a.out, *spatial))]

    def params(self, a, ins):
        cin = concrete(ins[0].shape[1], f"{self.name} input channels")
        k = _tuple(a.kernel, self.spatial)
        p = {"weight": Param((a.out, cin // a.groups, *k))}
        if a.bias:
            p["bias"] = Param((a.out,), init="zeros")
        return p

    def macs(self, a, ins, outs):
        k = _tuple(a.kernel, self.spatial)
        return norm(outs[0].numel() * (ins[0].shape[1] // a.groups) * prod(k))

    def module(self, a, ins, lit):
        cls = "nn.Conv1d" if self.spatial == 1 else "nn.Conv2d"
        return (
            f"{cls}({lit(ins[0].shape[1], 'in_channels')}, {lit(a.out, 'out_channels')}, "
            f"kernel_size={lit(a.kernel, 'kernel_size')}{geometry_kwargs(lit, a)}"
            f"{kwarg(lit, 'groups', a.groups, 1)}"
            f"{kwarg(lit, 'bias', a.bias, True)})"
        )


@register
class Conv1d(_Conv):
    name = "conv1d"
    doc = "1-D convolution over [B, C, L] (`nn.Conv1d`); groups for depthwise."
    spatial = 1


@register
class Conv2d(_Conv):
    name = "conv2d"
    doc = "2-D convolution over [B, C, H, W] (`nn.Conv2d`); padding may be 'same'."
    spatial = 2


class BatchNormAttrs(Attrs):
    eps: float = Field(default=1e-5, gt=0)
    momentum: float = Field(default=0.1, ge=0, le=1)


class _BatchNorm(Op):
    Attrs = BatchNormAttrs
    kind = "norm"
    elem_flops = 4
    ranks: tuple[int, ...]
    cls: str
    layout: str

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, self.ranks, self.name, self.layout)
        return [x]

    def params(self, a, ins):
        c = concrete(ins[0].shape[1], f"{self.name} channels")
        return {"weight": Param((c,), init="ones"), "bias": Param((c,), init="zeros")}

    def module(self, a, ins, lit):
        return (
            f"{self.cls}({lit(ins[0].shape[1], 'num_features')}"
            f"{kwarg(lit, 'eps', a.eps, 1e-5)}{kwarg(lit, 'momentum', a.momentum, 0.1)})"
        )


@register
class BatchNorm1d(_BatchNorm):
    name = "batchnorm1d"
    doc = "Batch normalisation over [B, C] or [B, C, L] (`nn.BatchNorm1d`)."
    ranks = (2, 3)
    cls = "nn.BatchNorm1d"
    layout = "[B, C] or [B, C, L]"


@register
class BatchNorm2d(_BatchNorm):
    name = "batchnorm2d"
    doc = "Batch normalisation over [B, C, H, W] (`nn.BatchNorm2d`)."
    ranks = (4,)
    cls = "nn.BatchNorm2d"
    layout = "[B, C, H, W]"


class LayerNormAttrs(Attrs):
    eps: float = Field(default=1e-5, gt=0)
    bias: bool = True


@register
class LayerNorm(Op):
    name = "layernorm"
    doc = "Layer normalisation over the last dimension (`nn.LayerNorm`)."
    Attrs = LayerNormAttrs
    kind = "norm"
    elem_flops = 8

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        return [ins[0]]

    def params(self, a, ins):
        d = concrete(ins[0].shape[-1], "layernorm features")
        p = {"weight": Param((d,), init="ones")}
        if a.bias:
            p["bias"] = Param((d,), init="zeros")
        return p

    def module(self, a, ins, lit):
        return (
            f"nn.LayerNorm({lit(ins[0].shape[-1], 'normalized_shape')}"
            f"{kwarg(lit, 'eps', a.eps, 1e-5)}{kwarg(lit, 'bias', a.bias, True)})"
        )


class RMSNormAttrs(Attrs):
    eps: float = Field(default=1e-6, gt=0)


@register
class RMSNorm(Op):
    name = "rmsnorm"
    doc = "Root-mean-square normalisation over the last dimension (`nn.RMSNorm`)."
    Attrs = RMSNormAttrs
    kind = "norm"
    elem_flops = 5

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        return [ins[0]]

    def params(self, a, ins):
        return {"weight": Param((concrete(ins[0].shape[-1], "rmsnorm features"),), init="ones")}

    def cost(self, a, ins, outs, params, size):
        # PyTorch's RMSNorm is composite: backward also keeps the normalised input.
        return replace(super().cost(a, ins, outs, params, size), saved=size(outs[0]))

    def module(self, a, ins, lit):
        return f"nn.RMSNorm({lit(ins[0].shape[-1], 'normalized_shape')}, eps={lit(a.eps, 'eps')})"


class GroupNormAttrs(Attrs):
    groups: int = PosInt
    eps: float = Field(default=1e-5, gt=0)


@register
class GroupNorm(Op):
    name = "groupnorm"
    doc = "Group normalisation over channel groups of [B, C, ...] (`nn.GroupNorm`)."
    Attrs = GroupNormAttrs
    kind = "norm"
    elem_flops = 8

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        if x.rank < 2:
            raise ShapeError(
                f"groupnorm expects [B, C, ...], got {x}", "feed it a [B, C, ...] tensor"
            )
        if isinstance(x.shape[1], int) and x.shape[1] % a.groups:
            raise ShapeError(
                f"groupnorm: {x.shape[1]} channels do not split into {a.groups} groups",
                "choose groups that divide the channel count",
            )
        if all(isinstance(d, int) for d in x.shape[1:]) and prod(x.shape[1:]) == a.groups:
            raise ShapeError(
                f"groupnorm: each of the {a.groups} groups of {x} holds a single value, which "
                "cannot be normalised",
                "use fewer groups",
            )
        return [x]

    def params(self, a, ins):
        c = concrete(ins[0].shape[1], "groupnorm channels")
        return {"weight": Param((c,), init="ones"), "bias": Param((c,), init="zeros")}

    def module(self, a, ins, lit):
        return (
            f"nn.GroupNorm({lit(a.groups, 'num_groups')}, {lit(ins[0].shape[1], 'num_channels')}"
            f"{kwarg(lit, 'eps', a.eps, 1e-5)})"
        )


class EmbeddingAttrs(Attrs):
    num: int = Field(gt=0, description="vocabulary size")
    dim: int = PosInt
    std: float | None = Field(
        default=None,
        gt=0,
        description="initialise the table from N(0, std^2), e.g. GPT-2's 0.02 (default: "
        "PyTorch's N(0, 1), too large for an output layer tied to it)",
    )


@register
class Embedding(Op):
    name = "embedding"
    doc = "Lookup table from integer ids to vectors (`nn.Embedding`)."
    Attrs = EmbeddingAttrs
    kind = "copy"
    elem_flops = 0

    def infer(self, a, ins):
        (x,) = ins
        if x.dtype not in ("i64", "i32"):
            raise ShapeError(
                f"embedding needs integer ids, got {x}", "declare the input with dtype i64"
            )
        return [TensorType((*x.shape, a.dim), "f32")]

    def params(self, a, ins):
        return {"weight": Param((a.num, a.dim), init="normal")}

    def cost(self, a, ins, outs, params, size):
        # A gather: only the looked-up rows of the table are read.
        return replace(super().cost(a, ins, outs, params, size), weights=size(outs[0]))

    def module(self, a, ins, lit):
        return f"nn.Embedding({lit(a.num, 'num_embeddings')}, {lit(a.dim, 'embedding_dim')})"

    def init(self, a, mod, lit):
        return [] if a.std is None else [f"nn.init.normal_({mod}.weight, std={lit(a.std, 'std')})"]


class DropoutAttrs(Attrs):
    p: float = Field(default=0.1, ge=0, lt=1)


@register
class Dropout(Op):
    name = "dropout"
    doc = "Dropout during training, identity in eval mode (`nn.Dropout`)."
    Attrs = DropoutAttrs
    kind = "view"  # identity at inference
    train_copy = True
    saves = "none"

    def infer(self, a, ins):
        return [ins[0]]

    def cost(self, a, ins, outs, params, size):
        # Backward keeps the mask (bool, as the fused GPU kernel makes it).
        mask = ins[0].numel() * DTYPE_BYTES["bool"] if a.p else 0
        return replace(super().cost(a, ins, outs, params, size), saved=mask)

    def module(self, a, ins, lit):
        return f"nn.Dropout({lit(a.p, 'p')})"
