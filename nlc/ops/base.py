"""The op definition contract and registry.

An op is defined once: its attribute model (validated by pydantic), its shape rule, the
parameters it declares, its multiply-accumulate count, and how it is written in PyTorch.
The YAML keys, the checker's table and the emitter all derive from this one definition.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from nlc.ir.graph import Param
from nlc.ir.types import FLOAT_DTYPES, Dim, TensorType


class Lit(Protocol):
    """Renders a literal of the emitted code; the emitter may turn it into a constructor
    argument when it varies between instances of one block class. With `explicit` set, keyword
    arguments go through `optional`, which lets the emitter drop them later where they equal
    their default in every instance, so instances that differ only there can share a class."""

    explicit: bool

    def __call__(self, value: object, hint: str) -> str: ...

    def optional(self, name: str, value: object, default: object) -> str: ...


def kwarg(lit: Lit, name: str, value: object, default: object) -> str:
    """`, name=value`, or nothing when `value` is the default."""
    if lit.explicit:
        return lit.optional(name, value, default)
    if value == default and type(value) is type(default):
        return ""
    return f", {name}={lit(value, name)}"


class ShapeError(Exception):
    """Raised by a shape rule; the frontend adds the node, its inputs and the source position."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class Attrs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAttrs(Attrs):
    pass


class Op:
    name: ClassVar[str]
    doc: ClassVar[str]
    Attrs: ClassVar[type[Attrs]] = NoAttrs
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    layer: ClassVar[str | None] = None  # custom layer class the op needs in layers.py
    needs: ClassVar[tuple[str, ...]] = ()  # extra imports of the emitted code ("F", "torch")

    def infer(self, a, ins: list[TensorType]) -> list[TensorType]:
        raise NotImplementedError

    def params(self, a, ins: list[TensorType]) -> dict[str, Param]:
        return {}

    def macs(self, a, ins: list[TensorType], outs: list[TensorType]) -> Dim:
        return 0

    def module(self, a, ins: list[TensorType], lit: Lit) -> str | None:
        """Constructor expression of the op's `nn.Module`, or None for a functional op."""
        return None

    def call(self, a, args: list[str], mod: str | None, lit: Lit) -> str:
        """Forward expression given input variable names and the module reference."""
        assert mod is not None, f"{self.name} must define call() or module()"
        return f"{mod}({', '.join(args)})"


REGISTRY: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    REGISTRY[cls.name] = cls()
    return cls


def float_input(t: TensorType, op: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ShapeError(
            f"{op} needs a floating-point input, got {t}",
            "feed it the output of an embedding or cast the input to f32",
        )


def need_rank(t: TensorType, ranks: tuple[int, ...], op: str, layout: str) -> None:
    if t.rank not in ranks:
        raise ShapeError(f"{op} expects a {layout} input, got {t}")


def norm_axis(axis: int, rank: int, op: str) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: dim {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def concrete(d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise ShapeError(
            f"{what} must be a known size to create parameters, but it is symbolic ({d})",
            "give that input dimension a number in `inputs`",
        )
    return d
