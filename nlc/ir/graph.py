"""Nodes and graphs: a flat SSA dataflow graph whose node names are `state_dict` prefixes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from nlc.errors import SourceLoc
from nlc.ir.types import TensorType


@dataclass(frozen=True)
class Value:
    """Output `index` of the node called `node`."""

    node: str
    index: int = 0

    def __str__(self) -> str:
        return f"%{self.node}" if self.index == 0 else f"%{self.node}#{self.index}"


@dataclass(frozen=True)
class Param:
    """A declared parameter: concrete shape, dtype, how it is initialised, and an optional tie."""

    shape: tuple[int, ...]
    dtype: str = "f32"
    init: str = "default"
    tied_to: str | None = None  # qualified name of the parameter this one shares storage with

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Frame:
    """One level of module hierarchy a node sits in: a block instance or a repeated op.

    `path` is the instance's qualified name (`layer1.0`); `group` is the `nn.ModuleList`
    path when the instance comes from `repeat` (`layer1`), with `index` its position.
    """

    path: str
    block: str | None
    group: str | None = None
    index: int | None = None
    args: tuple[tuple[str, Any], ...] = ()
    inputs: tuple[tuple[str, Value], ...] = ()  # block input name -> value passed in
    loc: SourceLoc | None = None


@dataclass
class Node:
    name: str
    op: str
    attrs: BaseModel
    inputs: list[Value]
    outputs: list[TensorType]
    params: dict[str, Param] = field(default_factory=dict)
    frames: tuple[Frame, ...] = ()
    loc: SourceLoc | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def local_name(self) -> str:
        """The name inside the innermost frame (the attribute name in the emitted module)."""
        prefix = self.frames[-1].path + "." if self.frames else ""
        return self.name[len(prefix) :]

    @property
    def type(self) -> TensorType:
        return self.outputs[0]

    def num_params(self) -> int:
        """This node's own trainable scalars: a parameter tied to another node's counts there."""
        return sum(p.numel() for p in self.params.values() if p.tied_to is None)


@dataclass
class Graph:
    """Nodes in topological order (inputs first), keyed by qualified name."""

    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    outputs: dict[str, Value] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name!r}")
        self.nodes[node.name] = node
        return node

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self if n.op == "input"]

    def type_of(self, value: Value) -> TensorType:
        return self.nodes[value.node].outputs[value.index]

    def input_types(self, node: Node) -> list[TensorType]:
        return [self.type_of(v) for v in node.inputs]

    def users(self) -> dict[Value, list[str]]:
        """Map each value to the names of the nodes that read it (graph outputs not included)."""
        out: dict[Value, list[str]] = {}
        for node in self:
            for v in node.inputs:
                out.setdefault(v, []).append(node.name)
        return out

    def parameters(self) -> Iterator[tuple[str, Param]]:
        for node in self:
            for local, p in node.params.items():
                yield f"{node.name}.{local}", p

    def num_params(self) -> int:
        """Distinct trainable scalars: tied ones count once, as in `nn.Module.parameters()`."""
        return sum(node.num_params() for node in self)
