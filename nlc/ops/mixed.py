"""DARTS's mixed op (Liu et al. 2019): the softmax-weighted sum of the candidate ops' outputs.

`nlc search` with strategy darts rewrites each op choice of a space into its candidates and a
`mixed` node reading all of them; the node's parameter `alpha [n]` holds the architecture
weights, and the candidate with the largest weight is the one kept.
"""

from __future__ import annotations

from nlc.ir.graph import Param
from nlc.ir.types import types_equal
from nlc.ops.base import Op, ShapeError, float_input, register


@register
class Mixed(Op):
    name = "mixed"
    doc = (
        "DARTS mixed op: sum_i softmax(alpha)_i * x_i over inputs of one type, alpha [n] "
        "learned (the architecture weights of an op choice)."
    )
    min_inputs = 2
    max_inputs = None
    layer = "Mixed"
    in_flops = 2  # per input element: scale by its weight, add to the sum
    elem_flops = 0

    def infer(self, a, ins):
        first = ins[0]
        float_input(first, self.name)
        for i, t in enumerate(ins[1:], start=1):
            if not types_equal([t], [first]):
                raise ShapeError(
                    f"mixed: input {i} has type {t}, unlike input 0 ({first})",
                    "every option of an op choice must give the same output type to be mixed",
                )
        return [first]

    def params(self, a, ins):
        # Zeros: every candidate starts with the same weight 1/n.
        return {"alpha": Param((len(ins),), init="zeros")}

    def module(self, a, ins, lit):
        return f"Mixed({lit(len(ins), 'n')})"
