"""The pass contract: what a pass takes and returns, its registry, and the in-place op swap.

A pass is one public function `def name(graph, weights, options, target=None) -> PassResult`
that rewrites `graph` in place (the manager hands it a copy) and returns a new weights dict
(the caller's dict is never changed; tensors that stay are shared). `weights` None is the
structural mode: only the architecture changes and the generated model starts from a fresh init.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from nlc.ir import Graph, Node
from nlc.ir.types import types_equal
from nlc.ir.verify import VerifyError
from nlc.weights import Weights

if TYPE_CHECKING:
    from nlc.targets import Target

__all__ = ["PASSES", "Options", "Pass", "PassResult", "Weights", "register", "replace_op"]


@dataclass
class PassResult:
    graph: Graph
    weights: Weights | None
    modified: bool
    report: list[dict[str, Any]] = field(default_factory=list)  # one row per node considered


class Options(BaseModel):
    """Base of every pass's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PassFn = Callable[[Graph, "Weights | None", Any, "Target | None"], PassResult]


@dataclass(frozen=True)
class Pass:
    """A registry entry: the pass function with its name, one-line doc and options model."""

    name: str
    doc: str
    Options: type[Options]
    fn: PassFn

    def run(
        self, graph: Graph, weights: Weights | None, options: Options, target: Target | None = None
    ) -> PassResult:
        return self.fn(graph, weights, options, target)


PASSES: dict[str, Pass] = {}


def register(name: str, options: type[Options]) -> Callable[[PassFn], PassFn]:
    """Enter a pass function in `PASSES`; its doc is the first paragraph of its docstring."""

    def wrap(fn: PassFn) -> PassFn:
        doc = inspect.getdoc(fn) or ""
        PASSES[name] = Pass(name, " ".join(doc.split("\n\n")[0].split()), options, fn)
        return fn

    return wrap


def replace_op(graph: Graph, node: Node, op_name: str, attrs: BaseModel) -> None:
    """Give `node` another op in place (same name, inputs and frames), its parameters from the
    new op's declaration. The output types must stay: a rewrite may not change shapes."""
    from nlc.ops import REGISTRY

    op = REGISTRY[op_name]
    ins = graph.input_types(node)
    outs = op.infer(attrs, ins)
    if not types_equal(outs, node.outputs):
        got = ", ".join(map(str, outs))
        raise VerifyError(f"{node.name}: {op_name} gives {got}, the {node.op} gave {node.type}")
    node.op, node.attrs, node.params = op_name, attrs, op.params(attrs, ins)
