"""The IR verifier: structural invariants every pass must preserve."""

from __future__ import annotations

import re

from nlc.ir.graph import Graph
from nlc.ir.types import dims_equal

_QUALIFIED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.([A-Za-z][A-Za-z0-9_]*|\d+))*\Z")


class VerifyError(Exception):
    """A broken IR invariant: a compiler bug (or a bad pass), never a user error."""


def verify(graph: Graph) -> None:
    """Check names, SSA order, types against each op's shape rule, parameters and outputs."""
    from nlc.ops import REGISTRY

    seen: set[str] = set()
    params = dict(graph.parameters())
    for node in graph:
        if not _QUALIFIED.match(node.name):
            raise VerifyError(f"node name {node.name!r} is not a qualified identifier")
        for v in node.inputs:
            if v.node not in seen:
                raise VerifyError(f"{node.name}: input {v} is not defined before use")
            if v.index >= len(graph.nodes[v.node].outputs):
                raise VerifyError(f"{node.name}: input {v} does not exist")
        if node.op == "input":
            if node.inputs or node.params:
                raise VerifyError(f"input {node.name} must have no inputs and no params")
        else:
            op = REGISTRY.get(node.op)
            if op is None:
                raise VerifyError(f"{node.name}: unknown op {node.op!r}")
            ins = graph.input_types(node)
            outs = op.infer(node.attrs, ins)
            if len(outs) != len(node.outputs) or any(
                a.dtype != b.dtype or a.rank != b.rank or not all(map(dims_equal, a.shape, b.shape))
                for a, b in zip(outs, node.outputs, strict=True)
            ):
                got = ", ".join(map(str, node.outputs))
                want = ", ".join(map(str, outs))
                raise VerifyError(f"{node.name}: recorded type {got}, shape rule gives {want}")
            declared = op.params(node.attrs, ins)
            if {k: p.shape for k, p in declared.items()} != {
                k: p.shape for k, p in node.params.items()
            }:
                raise VerifyError(f"{node.name}: parameters do not match {node.op}'s declaration")
        for local, p in node.params.items():
            if not all(isinstance(d, int) and d > 0 for d in p.shape):
                raise VerifyError(f"{node.name}.{local}: parameter shape {p.shape} is not concrete")
            if p.tied_to is not None:
                target = params.get(p.tied_to)
                if target is None or target.shape != p.shape or target.tied_to is not None:
                    raise VerifyError(f"{node.name}.{local}: bad tie to {p.tied_to}")
        frames = [f.path for f in node.frames]
        for outer, inner in zip(frames, frames[1:], strict=False):
            if not inner.startswith(outer + "."):
                raise VerifyError(f"{node.name}: frame {inner} is not inside {outer}")
        if frames and not node.name.startswith(frames[-1] + "."):
            raise VerifyError(f"{node.name}: name is not inside its frame {frames[-1]}")
        seen.add(node.name)
    if not graph.outputs:
        raise VerifyError("graph has no outputs")
    for name, v in graph.outputs.items():
        if v.node not in graph.nodes:
            raise VerifyError(f"output {name} refers to missing node {v.node}")
