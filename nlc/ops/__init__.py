"""The op registry: importing this package registers every op."""

from nlc.ops import activation, nn, pooling, tensor, transformer  # noqa: F401  (registration)
from nlc.ops.base import REGISTRY, Op, ShapeError

__all__ = ["REGISTRY", "Op", "ShapeError"]
