"""The op registry: importing this package registers every op."""

from nlc.ops import (  # noqa: F401  (registration)
    activation,
    factorized,
    lora,
    mixed,
    nn,
    pooling,
    quantized,
    tensor,
    transformer,
)
from nlc.ops.base import REGISTRY, Op, ShapeError

__all__ = ["REGISTRY", "Op", "ShapeError"]
