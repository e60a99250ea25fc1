"""The op definition contract and registry.

An op is defined once: its attribute model (validated by pydantic), its shape rule, the
parameters it declares, its multiply-accumulate count, its cost (op class, FLOPs, bytes moved,
kernels, what backward keeps), and how it is written in PyTorch.
The YAML keys, the checker's table and the emitter all derive from this one definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from nlc.ir.graph import Param
from nlc.ir.types import FLOAT_DTYPES, Dim, TensorType, norm

# How an op runs on hardware, for the cost model: each class has its own achievable-efficiency
# factor in a target file. A view moves no data and launches nothing.
OpClass = Literal[
    "matmul", "conv", "depthwise", "attention", "elementwise", "norm", "reduce", "fft", "copy",
    "view",
]  # fmt: skip
Size = Callable[[TensorType], Dim]  # bytes of a tensor at the dtype the model runs in


@dataclass(frozen=True)
class OpCost:
    """What one forward execution of an op costs; sizes are bytes at the running dtype."""

    flops: dict[str, Dim]  # by op class: attention splits its projections from its scores
    read: Dim  # activation bytes read, the op's own temporaries included
    written: Dim  # activation bytes written, the op's own temporaries included
    weights: Dim  # parameter bytes read
    launches: int  # kernels launched; each pays the target's launch overhead
    scratch: Dim = 0  # bytes of temporaries alive only while the op runs
    saved: Dim = 0  # bytes kept for backward besides the tensors named by `Op.saves`


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
    kind: ClassVar[OpClass] = "elementwise"  # op class for the cost model
    elem_flops: ClassVar[int] = 1  # FLOPs per output element on top of 2 x MACs
    in_flops: ClassVar[int] = 0  # FLOPs per input element (reductions)
    # What backward keeps of the op's tensors; a view keeps nothing unless `train_copy`.
    saves: ClassVar[Literal["inputs", "outputs", "none"]] = "inputs"
    train_copy: ClassVar[bool] = False  # a view at inference that writes a tensor in training

    def infer(self, a, ins: list[TensorType]) -> list[TensorType]:
        raise NotImplementedError

    def params(self, a, ins: list[TensorType]) -> dict[str, Param]:
        return {}

    def macs(self, a, ins: list[TensorType], outs: list[TensorType]) -> Dim:
        return 0

    def op_class(self, a, ins: list[TensorType]) -> OpClass:
        return self.kind

    def cost(
        self, a, ins: list[TensorType], outs: list[TensorType], params: dict[str, Param], size: Size
    ) -> OpCost:
        """Symbolic forward cost: one kernel reading the inputs and parameters, writing the
        outputs. Ops that launch more kernels or touch less or more memory override it."""
        if self.kind == "view":
            return OpCost({}, 0, 0, 0, launches=0)
        flops = (
            2 * self.macs(a, ins, outs)
            + self.elem_flops * sum(o.numel() for o in outs)
            + self.in_flops * sum(t.numel() for t in ins)
        )
        return OpCost(
            {self.op_class(a, ins): norm(flops)},
            read=norm(sum(size(t) for t in ins)),
            written=norm(sum(size(t) for t in outs)),
            weights=param_bytes(params.values(), size),
            launches=1,
        )

    def module(self, a, ins: list[TensorType], lit: Lit) -> str | None:
        """Constructor expression of the op's `nn.Module`, or None for a functional op."""
        return None

    def init(self, a, mod: str, lit: Lit) -> list[str]:
        """Statements that initialise the module `mod` after its constructor (none by default:
        PyTorch's own initialisation)."""
        return []

    def call(self, a, args: list[str], mod: str | None, lit: Lit) -> str:
        """Forward expression given input variable names and the module reference."""
        assert mod is not None, f"{self.name} must define call() or module()"
        return f"{mod}({', '.join(args)})"


def param_bytes(params, size: Size) -> Dim:
    """Bytes of the given parameters at the running dtype."""
    return norm(sum(size(TensorType(p.shape, p.dtype)) for p in params))


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
        raise ShapeError(
            f"{op} expects a {layout} input, got {t}",
            f"reshape, flatten or permute the input into the {layout} layout first",
        )


def norm_axis(axis: int, rank: int, op: str) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(
            f"{op}: dim {axis} is out of range for a rank-{rank} tensor",
            f"dims count 0..{rank - 1} from the front or -1..-{rank} from the back",
        )
    return axis % rank


def concrete(d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise ShapeError(
            f"{what} must be a known size to create parameters, but it is symbolic ({d})",
            "give that input dimension a number in `inputs`",
        )
    return d
