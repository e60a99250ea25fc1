"""Pooling over the spatial dimensions of [B, C, H, W]."""

from __future__ import annotations

from dataclasses import replace

import sympy
from pydantic import Field

from nlc.ir.types import DTYPE_BYTES
from nlc.ops.base import Attrs, Op, ShapeError, float_input, need_rank, register


class PoolAttrs(Attrs):
    kernel: int = Field(gt=0)
    stride: int | None = Field(default=None, gt=0, description="defaults to kernel")
    padding: int = Field(default=0, ge=0)


class _Pool(Op):
    Attrs = PoolAttrs
    needs = ("F",)
    kind = "reduce"
    elem_flops = 0
    in_flops = 1
    fn: str

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (4,), self.name, "[B, C, H, W]")
        if 2 * a.padding > a.kernel:
            raise ShapeError(
                f"{self.name}: padding {a.padding} exceeds half the kernel {a.kernel}",
                f"use padding <= {a.kernel // 2}",
            )
        stride = a.stride or a.kernel
        spatial = []
        for size in x.shape[2:]:
            span = size + 2 * a.padding - a.kernel
            if isinstance(span, int):
                if span < 0:
                    raise ShapeError(
                        f"{self.name}: kernel {a.kernel} is larger than input {x}",
                        "use a smaller kernel, or adaptive_avgpool2d / global_avgpool",
                    )
                spatial.append(span // stride + 1)
            else:
                spatial.append(sympy.floor(span / stride) + 1)
        return [x.with_shape((*x.shape[:2], *spatial))]

    def call(self, a, args, mod, lit):
        text = f"{self.fn}({args[0]}, {lit(a.kernel, 'kernel_size')}"
        if a.stride is not None and a.stride != a.kernel:
            text += f", stride={lit(a.stride, 'stride')}"
        if a.padding:
            text += f", padding={lit(a.padding, 'padding')}"
        return text + ")"


@register
class MaxPool2d(_Pool):
    name = "maxpool2d"
    doc = "Max pooling over H and W."
    fn = "F.max_pool2d"

    def cost(self, a, ins, outs, params, size):
        # Backward keeps the input and the argmax indices (int64).
        indices = outs[0].numel() * DTYPE_BYTES["i64"]
        return replace(super().cost(a, ins, outs, params, size), saved=indices)


@register
class AvgPool2d(_Pool):
    name = "avgpool2d"
    doc = "Average pooling over H and W."
    fn = "F.avg_pool2d"


class AdaptiveAttrs(Attrs):
    size: int | tuple[int, int] = 1


@register
class AdaptiveAvgPool2d(Op):
    name = "adaptive_avgpool2d"
    doc = "Average pooling to a fixed output size [B, C, size, size]."
    Attrs = AdaptiveAttrs
    needs = ("F",)
    kind = "reduce"
    elem_flops = 0
    in_flops = 1

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (4,), self.name, "[B, C, H, W]")
        size = a.size if isinstance(a.size, tuple) else (a.size, a.size)
        return [x.with_shape((*x.shape[:2], *size))]

    def call(self, a, args, mod, lit):
        return f"F.adaptive_avg_pool2d({args[0]}, {lit(a.size, 'output_size')})"


@register
class GlobalAvgPool(Op):
    name = "global_avgpool"
    doc = "Mean over all spatial dimensions: [B, C, ...] -> [B, C]."
    kind = "reduce"
    elem_flops = 0
    in_flops = 1
    saves = "none"

    def infer(self, a, ins):
        (x,) = ins
        float_input(x, self.name)
        need_rank(x, (3, 4, 5), self.name, "[B, C, ...spatial]")
        return [x.with_shape(x.shape[:2])]

    def call(self, a, args, mod, lit):
        return f"{args[0]}.flatten(2).mean(-1)"
