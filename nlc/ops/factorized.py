"""Factorized layers: a linear or convolution whose weight is a product of smaller factors.

Compression passes swap them in place of a dense node, keeping its name; a spec may also use
them directly. Each runs as a chain of factor layers, one kernel each, and its cost adds up
those layers, temporaries included, so the cost model can tell whether factorizing pays.
The parameter names and shapes are what the passes fill with decomposed weights.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from typing import ClassVar

import sympy
from pydantic import Field

from nlc.ir.graph import Param
from nlc.ir.types import Dim, TensorType, norm, prod
from nlc.ops.base import (
    Attrs,
    Op,
    OpClass,
    OpCost,
    ShapeError,
    concrete,
    kwarg,
    param_bytes,
    register,
)
from nlc.ops.nn import Conv2d, ConvGeometry, Linear, PosInt, geometry_kwargs

Layers = list[tuple[OpClass, Dim]]  # MACs of each factor layer, with its op class


class _Chain(Op):
    """An op computed by factor layers run one after another."""

    def chain(self, a, x: TensorType, y: TensorType) -> tuple[Layers, list[TensorType]]:
        """The factor layers from input `x` to output `y`, and the temporaries between them."""
        raise NotImplementedError

    def macs(self, a, ins, outs):
        layers, _ = self.chain(a, ins[0], outs[0])
        return norm(sum(m for _, m in layers))

    def cost(self, a, ins, outs, params, size):
        # Each temporary is written by one layer and read by the next, and backward keeps it:
        # the next layer's weight gradient needs it. While a layer runs, its input and output
        # temporaries are both alive.
        layers, temps = self.chain(a, ins[0], outs[0])
        flops: dict[str, Dim] = {}
        for op_class, m in layers:
            if m != 0:  # a copy computes nothing
                flops[op_class] = norm(flops.get(op_class, 0) + 2 * m)
        t = [size(h) for h in temps]
        live = [s + u for s, u in pairwise(t)]
        return OpCost(
            flops,
            read=norm(size(ins[0]) + sum(t)),
            written=norm(sum(t) + size(outs[0])),
            weights=param_bytes(params.values(), size),
            launches=len(layers),
            scratch=norm(sympy.Max(*(live or t))),
            saved=norm(sum(t)),
        )


class LowRankLinearAttrs(Attrs):
    out: int = PosInt
    rank: int = Field(gt=0, description="width between the two layers")
    bias: bool = True


@register
class LowRankLinear(_Chain, Linear):
    name = "lowrank_linear"
    doc = "Linear layer with a rank-`rank` weight W = U V: two `nn.Linear`, in -> rank -> out."
    Attrs = LowRankLinearAttrs

    def params(self, a, ins):
        fin = concrete(ins[0].shape[-1], "lowrank_linear input features")
        p = {"0.weight": Param((a.rank, fin)), "1.weight": Param((a.out, a.rank))}
        if a.bias:
            p["1.bias"] = Param((a.out,), init="zeros")
        return p

    def chain(self, a, x, y):
        h = x.with_shape((*x.shape[:-1], a.rank))
        return [("matmul", h.numel() * x.shape[-1]), ("matmul", y.numel() * a.rank)], [h]

    def module(self, a, ins, lit):
        rank = lit(a.rank, "rank")
        return (
            f"nn.Sequential(nn.Linear({lit(ins[0].shape[-1], 'in_features')}, {rank}"
            f"{kwarg(lit, 'bias', False, True)}), "
            f"nn.Linear({rank}, {lit(a.out, 'out_features')}{kwarg(lit, 'bias', a.bias, True)}))"
        )


class FactorConvAttrs(ConvGeometry):
    bias: bool = True
    # Factor layers factorize a dense kernel: the conv2d shape rules see a single group.
    groups: ClassVar[int] = 1


class TuckerConvAttrs(FactorConvAttrs):
    ranks: list[int] = Field(description="[r_in, r_out]: channels of the core convolution")


def _conv_input(t: TensorType, op: str) -> int:
    return concrete(t.shape[1], f"{op} input channels")


@register
class TuckerConv2d(_Chain, Conv2d):
    name = "tucker_conv2d"
    doc = "Tucker-2 convolution (Kim et al. 2016): 1x1 to r_in, k x k core to r_out, 1x1 to out."
    Attrs = TuckerConvAttrs

    def infer(self, a, ins):
        if len(a.ranks) != 2 or min(a.ranks) <= 0:
            raise ShapeError(
                f"tucker_conv2d: ranks must be two positive integers, got {a.ranks}",
                "write ranks: [r_in, r_out], the channels into and out of the core convolution",
            )
        return super().infer(a, ins)

    def params(self, a, ins):
        (r_in, r_out), k = a.ranks, self._geometry(a)[0]
        p = {
            "0.weight": Param((r_in, _conv_input(ins[0], self.name), 1, 1)),
            "1.weight": Param((r_out, r_in, *k)),
            "2.weight": Param((a.out, r_out, 1, 1)),
        }
        if a.bias:
            p["2.bias"] = Param((a.out,), init="zeros")
        return p

    def chain(self, a, x, y):
        (r_in, r_out), k = a.ranks, self._geometry(a)[0]
        h0 = x.with_shape((x.shape[0], r_in, *x.shape[2:]))
        h1 = y.with_shape((y.shape[0], r_out, *y.shape[2:]))
        layers: Layers = [
            ("conv", h0.numel() * x.shape[1]),
            ("conv", h1.numel() * r_in * prod(k)),
            ("conv", y.numel() * r_out),
        ]
        return layers, [h0, h1]

    def module(self, a, ins, lit):
        r_in, r_out = lit(a.ranks[0], "rank_in"), lit(a.ranks[1], "rank_out")
        one, no_bias = lit(1, "pointwise"), kwarg(lit, "bias", False, True)
        return (
            f"nn.Sequential(nn.Conv2d({lit(ins[0].shape[1], 'in_channels')}, {r_in}, {one}"
            f"{no_bias}), nn.Conv2d({r_in}, {r_out}, kernel_size={lit(a.kernel, 'kernel_size')}"
            f"{geometry_kwargs(lit, a)}{no_bias}), nn.Conv2d({r_out}, "
            f"{lit(a.out, 'out_channels')}, {one}{kwarg(lit, 'bias', a.bias, True)}))"
        )


class CPConvAttrs(FactorConvAttrs):
    rank: int = Field(gt=0, description="number of rank-1 terms of the kernel")


@register
class CPConv2d(_Chain, Conv2d):
    name = "cp_conv2d"
    doc = (
        "CP convolution (Lebedev et al. 2015): 1x1 to rank, depthwise k x 1 and 1 x k, 1x1 to out."
    )
    Attrs = CPConvAttrs

    def params(self, a, ins):
        r, (kh, kw) = a.rank, self._geometry(a)[0]
        p = {
            "0.weight": Param((r, _conv_input(ins[0], self.name), 1, 1)),
            "1.weight": Param((r, 1, kh, 1)),
            "2.weight": Param((r, 1, 1, kw)),
            "3.weight": Param((a.out, r, 1, 1)),
        }
        if a.bias:
            p["3.bias"] = Param((a.out,), init="zeros")
        return p

    def chain(self, a, x, y):
        r, (kh, kw) = a.rank, self._geometry(a)[0]
        h0 = x.with_shape((x.shape[0], r, *x.shape[2:]))
        h1 = x.with_shape((x.shape[0], r, y.shape[2], x.shape[3]))  # after the k x 1 conv
        h2 = y.with_shape((y.shape[0], r, *y.shape[2:]))
        layers: Layers = [
            ("conv", h0.numel() * x.shape[1]),
            ("depthwise", h1.numel() * kh),
            ("depthwise", h2.numel() * kw),
            ("conv", y.numel() * r),
        ]
        return layers, [h0, h1, h2]

    def module(self, a, ins, lit):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self._geometry(a)
        r, one, no_bias = lit(a.rank, "rank"), lit(1, "pointwise"), kwarg(lit, "bias", False, True)
        # PyTorch's 'same' pads each dim on its own, so each depthwise conv keeps it.
        same = a.padding == "same"

        def depthwise(kernel: str, s, p, d) -> str:
            return (
                f"nn.Conv2d({r}, {r}, kernel_size={kernel}"
                f"{kwarg(lit, 'stride', s, (1, 1))}{kwarg(lit, 'padding', p, (0, 0))}"
                f"{kwarg(lit, 'dilation', d, (1, 1))}, groups={r}{no_bias})"
            )

        k_h, k_w = f"({lit(kh, 'kernel_size')}, 1)", f"(1, {lit(kw, 'kernel_size')})"
        return (
            f"nn.Sequential(nn.Conv2d({lit(ins[0].shape[1], 'in_channels')}, {r}, {one}"
            f"{no_bias}), {depthwise(k_h, (sh, 1), 'same' if same else (ph, 0), (dh, 1))}, "
            f"{depthwise(k_w, (1, sw), 'same' if same else (0, pw), (1, dw))}, "
            f"nn.Conv2d({r}, {lit(a.out, 'out_channels')}, {one}"
            f"{kwarg(lit, 'bias', a.bias, True)}))"
        )


class TTLinearAttrs(Attrs):
    out: int = PosInt
    in_modes: list[int] = Field(description="factors of the input features, d >= 2 of them")
    out_modes: list[int] = Field(description="factors of `out`, as many as in_modes")
    ranks: list[int] = Field(description="TT ranks, d + 1 of them; the first and last are 1")
    bias: bool = True


@register
class TTLinear(_Chain, Linear):
    name = "tt_linear"
    doc = "Linear layer with a tensor-train matrix weight (Novikov et al. 2015): a matmul per core."
    Attrs = TTLinearAttrs
    layer = "TTLinear"

    def infer(self, a, ins):
        outs = super().infer(a, ins)
        _check_tt(a, concrete(ins[0].shape[-1], "tt_linear input features"))
        return outs

    def params(self, a, ins):
        shapes = zip(a.ranks[:-1], a.in_modes, a.out_modes, a.ranks[1:], strict=True)
        p = {f"cores.{k}": Param(tuple(s)) for k, s in enumerate(shapes)}
        if a.bias:
            p["bias"] = Param((a.out,), init="zeros")
        return p

    def chain(self, a, x, y):
        # As TTLinear runs it: step k copies the state (`size` values per token) to move
        # in-mode k next to rank k, then multiplies the copy by core k.
        tokens, size = prod(x.shape[:-1]), x.shape[-1]
        layers: Layers = []
        temps = []
        for r, m, n, s in zip(a.ranks[:-1], a.in_modes, a.out_modes, a.ranks[1:], strict=True):
            layers += [("copy", 0), ("matmul", tokens * size * n * s)]
            temps.append(x.with_shape((*x.shape[:-1], size)))
            size = size // (r * m) * n * s
            temps.append(x.with_shape((*x.shape[:-1], size)))
        return layers, temps[:-1]  # the last matmul writes the output

    def cost(self, a, ins, outs, params, size):
        # Backward keeps the copies, the matmuls' inputs; the bias is one more kernel.
        base = super().cost(a, ins, outs, params, size)
        copies = self.chain(a, ins[0], outs[0])[1][::2]
        base = replace(base, saved=norm(sum(size(t) for t in copies)))
        if not a.bias:
            return base
        y = outs[0]
        return replace(
            base,
            flops={**base.flops, "elementwise": y.numel()},
            read=norm(base.read + size(y)),
            written=norm(base.written + size(y)),
            launches=base.launches + 1,
        )

    def module(self, a, ins, lit):
        return (
            f"TTLinear({lit(a.in_modes, 'in_modes')}, {lit(a.out_modes, 'out_modes')}, "
            f"{lit(a.ranks, 'ranks')}{kwarg(lit, 'bias', a.bias, True)})"
        )


def _check_tt(a: TTLinearAttrs, features: int) -> None:
    d = len(a.in_modes)
    if d < 2 or len(a.out_modes) != d:
        raise ShapeError(
            f"tt_linear: in_modes and out_modes need the same number (>= 2) of modes, got "
            f"{a.in_modes} and {a.out_modes}",
            "factor the input and output features into as many modes each, e.g. "
            "in_modes: [4, 8], out_modes: [8, 8]",
        )
    if min(a.in_modes + a.out_modes) <= 0:
        raise ShapeError(
            f"tt_linear: modes must be positive, got {a.in_modes} and {a.out_modes}",
            "every mode is a factor of the features",
        )
    if len(a.ranks) != d + 1 or a.ranks[0] != 1 or a.ranks[-1] != 1 or min(a.ranks) <= 0:
        raise ShapeError(
            f"tt_linear: ranks must be {d + 1} positive integers starting and ending with 1, "
            f"got {a.ranks}",
            f"one rank between each pair of cores, e.g. ranks: {[1] + [4] * (d - 1) + [1]}",
        )
    if prod(a.out_modes) != a.out:
        raise ShapeError(
            f"tt_linear: out_modes {a.out_modes} multiply to {prod(a.out_modes)}, not to out "
            f"({a.out})",
            "choose out_modes whose product is out",
        )
    if prod(a.in_modes) != features:
        raise ShapeError(
            f"tt_linear: in_modes {a.in_modes} multiply to {prod(a.in_modes)}, but the input "
            f"has {features} features",
            "choose in_modes whose product is the input's last dimension",
        )
