"""Tensor types with symbolic dimensions.

A dimension is a Python int when known, or a sympy expression over the spec's symbolic
dims (`B`, `T`, ...). Parameters always have concrete (int) shapes; activations may not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import sympy

Dim = int | sympy.Expr

# Spec dtype name -> torch dtype attribute name.
DTYPES = {
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "f64": "float64",
    "i64": "int64",
    "i32": "int32",
    "bool": "bool",
    "u8": "uint8",  # packed 4-bit weights (nlc.ops.quantized)
}
FLOAT_DTYPES = frozenset({"f32", "f16", "bf16", "f64"})
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i64": 8, "i32": 4, "bool": 1, "u8": 1}


def sym(name: str) -> sympy.Symbol:
    """The symbolic dimension `name` (positive integer)."""
    return sympy.Symbol(name, integer=True, positive=True)


def norm(d: Dim) -> Dim:
    """Collapse sympy integers to int so concrete dims compare and print as plain numbers.

    Sympy's automatic evaluation already keeps these sums, products and floors canonical;
    `simplify` would take seconds on the nested floors of a deep strided network.
    """
    if isinstance(d, sympy.Expr) and d.is_Integer:
        return int(d)
    return d


def is_concrete(d: Dim) -> bool:
    return isinstance(d, int)


def dim_str(d: Dim) -> str:
    """
    >>> dim_str(64), dim_str(sym("B") * 2)
    ('64', '2*B')
    """
    return str(d).replace(" ", "")


def prod(dims) -> Dim:
    return norm(reduce(lambda a, b: a * b, dims, 1))


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "f32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(tuple(norm(d) for d in shape), self.dtype)

    def dim(self, i: int) -> Dim:
        return self.shape[i]

    def numel(self) -> Dim:
        return prod(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(dim_str(d) for d in self.shape)}]"


def types_equal(a: list[TensorType], b: list[TensorType]) -> bool:
    """Whether two lists of output types agree: dtypes, ranks and every dim (symbolically)."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.rank == y.rank and all(map(dims_equal, x.shape, y.shape))
        for x, y in zip(a, b, strict=True)
    )
