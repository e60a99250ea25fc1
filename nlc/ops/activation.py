"""Elementwise activations and softmax: functional, no parameters."""

from __future__ import annotations

from typing import ClassVar, Literal

from nlc.ops.base import Attrs, Op, float_input, norm_axis, register


class _Activation(Op):
    fn: ClassVar[str]  # the functional form, applied to the input variable

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        return [ins[0]]

    def call(self, a, args, mod, lit):
        return f"{self.fn}({args[0]})"


def _activation(
    op_name: str, fn: str, doc: str, flops: int, saves: str = "inputs", needs: str = "F"
) -> None:
    """Register an activation; `flops` per element, `saves` what its backward needs."""
    attrs = {"name": op_name, "fn": fn, "doc": doc, "needs": (needs,)}
    register(type(op_name.title(), (_Activation,), {**attrs, "elem_flops": flops, "saves": saves}))


_activation("relu", "F.relu", "Rectified linear unit, max(x, 0).", 1, saves="outputs")
_activation("relu6", "F.relu6", "ReLU clipped at 6 (MobileNet).", 2)
_activation("silu", "F.silu", "x * sigmoid(x), also called swish.", 4)
_activation("sigmoid", "torch.sigmoid", "Logistic sigmoid.", 4, saves="outputs", needs="torch")
_activation("tanh", "torch.tanh", "Hyperbolic tangent.", 5, saves="outputs", needs="torch")
_activation("hardswish", "F.hardswish", "Piecewise-linear swish (MobileNetV3).", 4)


class GeluAttrs(Attrs):
    approximate: Literal["none", "tanh"] = "none"


@register
class Gelu(Op):
    name = "gelu"
    doc = "Gaussian error linear unit; approximate: tanh gives GPT-2's form."
    Attrs = GeluAttrs
    needs = ("F",)
    elem_flops = 8

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        return [ins[0]]

    def call(self, a, args, mod, lit):
        if a.approximate == "none":
            return f"F.gelu({args[0]})"
        return f"F.gelu({args[0]}, approximate={lit(a.approximate, 'approximate')})"


class SoftmaxAttrs(Attrs):
    dim: int = -1


@register
class Softmax(Op):
    name = "softmax"
    doc = "Softmax along `dim`."
    Attrs = SoftmaxAttrs
    kind = "norm"  # a row reduction and a rescale, like layernorm
    elem_flops = 5
    saves = "outputs"

    def infer(self, a, ins):
        float_input(ins[0], self.name)
        norm_axis(a.dim, ins[0].rank, self.name)
        return [ins[0]]

    def call(self, a, args, mod, lit):
        return f"{args[0]}.softmax(dim={lit(a.dim, 'dim')})"
