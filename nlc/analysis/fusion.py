"""Epilogue fusion: the nodes a runtime merges into the kernel of the convolution or linear
layer before them, so that they launch nothing, move no tensor of their own and compute at
that kernel's rate.

Eager PyTorch fuses nothing. onnxruntime's CPU graph optimisations do (the batchnorm after a
convolution is already folded into its weights at export): a convolution absorbs a
batchnorm, then a residual add whose other input another convolution computed (NCHWc Conv
with Sum), then an activation, in that order; a Gemm, which a linear layer of a 2-D input
becomes, absorbs an activation (FusedGemm; a 3-D input stays MatMul and Add). A node is
absorbed only when it is the sole reader of what the chain so far computes, as the runtime
needs no unfused copy of it then.
"""

from __future__ import annotations

from dataclasses import dataclass

from nlc.analysis.plan import Plan
from nlc.ir import Value
from nlc.ops import REGISTRY

_CONV_ACTIVATIONS = dict.fromkeys(("relu", "relu6", "sigmoid", "tanh", "hardswish"), 2)
_CONV2D = {"batchnorm2d": 0, "add": 1, **_CONV_ACTIVATIONS}
_LINEAR = dict.fromkeys(("relu", "sigmoid", "tanh"), 2)
# runtime -> anchor op -> absorbed op -> its stage: a chain absorbs stages in increasing order.
# A factorized layer ends in the kind of layer it factorizes (a 1x1 conv, a linear).
EPILOGUES: dict[str, dict[str, dict[str, int]]] = {
    "onnxruntime": {
        "conv1d": {"batchnorm1d": 0, "add": 1, **_CONV_ACTIVATIONS},
        "conv2d": _CONV2D,
        "tucker_conv2d": _CONV2D,
        "cp_conv2d": _CONV2D,
        "linear": _LINEAR,
        "lowrank_linear": _LINEAR,
    },
}
GEMM_RANK = 2  # the input rank of a linear layer that runs as a Gemm


@dataclass(frozen=True)
class Epilogue:
    """A node merged into the kernel of a convolution or linear layer of op class `into`,
    which hands it the inputs at positions `handed` (it still reads the others)."""

    into: str
    handed: frozenset[int]


def epilogues(plan: Plan, runtime: str) -> dict[str, Epilogue]:
    """The nodes `runtime` merges into the kernel before them, by name."""
    rules = EPILOGUES.get(runtime, {})
    graph = plan.graph
    readers: dict[Value, int] = {}  # non-view readers of each storage, graph outputs included
    for node in plan.live:
        if node.op != "input" and REGISTRY[node.op].kind != "view":
            for v in node.inputs:
                readers[plan.roots[v]] = readers.get(plan.roots[v], 0) + 1
    for v in graph.outputs.values():
        readers[plan.roots[v]] = readers.get(plan.roots[v], 0) + 1
    fused: dict[str, Epilogue] = {}
    # storage a chain computes -> its anchor op, its stage, the anchor's op class
    chains: dict[Value, tuple[str, int, str]] = {}
    for node in plan.live:
        if node.op == "input" or REGISTRY[node.op].kind == "view":
            continue
        roots = [plan.roots[v] for v in node.inputs]
        for i, root in enumerate(roots):
            if root not in chains or readers[root] > 1:
                continue
            anchor, stage, into = chains[root]
            later = rules[anchor].get(node.op, -1) > stage
            # the other inputs (a residual) must come out of the same kind of kernel
            same = all(chains.get(r, ("",))[0] == anchor for j, r in enumerate(roots) if j != i)
            if later and same:
                fused[node.name] = Epilogue(into, frozenset({i}))
                chains[Value(node.name)] = anchor, rules[anchor][node.op], into
                break
        ins = graph.input_types(node)
        gemm = node.op not in ("linear", "lowrank_linear") or ins[0].rank == GEMM_RANK
        if node.name not in fused and node.op in rules and gemm:  # a chain starts here
            chains[Value(node.name)] = node.op, -1, REGISTRY[node.op].op_class(node.attrs, ins)
    return fused
