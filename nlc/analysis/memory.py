"""Memory a graph needs: inference (weights + peak live activations) and training with AdamW.

Activations are tracked by liveness over the topological order: a tensor's storage is
allocated by the node that writes it and freed after its last reader (graph outputs live to
the end; views share their input's storage). Training keeps, in addition, what each op's
backward needs (`Op.saves` and `OpCost.saved`) until the end of the forward pass, and adds
one gradient the size of the largest activation for the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nlc.analysis.plan import Plan, byte_size, running_dtype
from nlc.ir import Node, Value
from nlc.ops import REGISTRY
from nlc.ops.base import param_bytes


@dataclass(frozen=True)
class Memory:
    """Bytes by purpose."""

    weights: int
    activations: int
    gradients: int = 0
    optimizer: int = 0
    weight_copies: int = 0  # half-precision copies of the weights under mixed precision

    @property
    def total(self) -> int:
        return (
            self.weights + self.activations + self.gradients + self.optimizer + self.weight_copies
        )


def inference_memory(plan: Plan, at: Callable) -> Memory:
    """Weights at the running dtype and the peak of live activations; `at` evaluates sizes."""
    weights = at(param_bytes(_unique_params(plan), plan.size))
    return Memory(weights, _peak_activations(plan, at, train=False))


def training_memory(plan: Plan, at: Callable) -> Memory:
    """One AdamW step. Weights, gradients and both moments stay in the declared dtype (f32);
    running in a half dtype (mixed precision) adds half copies of the weights and halves the
    activations."""
    params = _unique_params(plan)
    master = at(param_bytes(params, byte_size(None)))
    cast = [p for p in params if running_dtype(p.dtype, plan.dtype) != p.dtype]
    return Memory(
        weights=master,
        activations=_peak_activations(plan, at, train=True),
        gradients=master,
        optimizer=2 * master,
        weight_copies=at(param_bytes(cast, plan.size)),
    )


def largest_batch(memory_at: Callable[[int], int], capacity: int) -> int:
    """The largest batch size whose memory fits in `capacity` (0 if not even 1 does), for a
    `memory_at(batch)` that grows with the batch. Memory is close to affine in the batch, so
    the search starts where the line through batches 1 and 2 meets the capacity."""

    def fits(batch: int) -> bool:
        return memory_at(batch) <= capacity

    first = memory_at(1)
    if first > capacity:
        return 0
    slope = max(1, memory_at(2) - first)  # the inputs alone grow with the batch
    guess, step = 1 + (capacity - first) // slope, 1
    # Bracket the answer, fits(lo) and not fits(hi), galloping away from the guess.
    if fits(guess):
        lo = guess
        while fits(lo + step):
            lo, step = lo + step, 2 * step
        hi = lo + step
    else:
        hi = guess
        while not fits(lo := max(1, hi - step)):
            hi, step = lo, 2 * step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _unique_params(plan: Plan):
    return [p for _, p in plan.graph.parameters() if p.tied_to is None]


def _peak_activations(plan: Plan, at: Callable, train: bool) -> int:
    graph = plan.graph
    roots = plan.train_roots if train else plan.roots
    nodes = plan.live
    end = len(nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    stored = {roots[v] for n in nodes for v in n.inputs} | {
        roots[Value(n.name, i)] for n in nodes for i in range(len(n.outputs))
    }
    sizes = {v: at(plan.size(graph.type_of(v))) for v in stored}
    last = {root: index[root.node] for root in sizes}
    for node in nodes:
        for v in node.inputs:
            last[roots[v]] = max(last[roots[v]], index[node.name])
    for v in graph.outputs.values():
        last[roots[v]] = end
    # Bytes allocated at step i (delta[i]) and freed after step i (delta[i + 1]).
    delta = [0] * (end + 2)
    extra = [0] * (end + 1)  # temporaries alive only during a node
    if train:
        for root in kept_for_backward(plan.live, roots):
            last[root] = end
    for root, size in sizes.items():
        delta[index[root.node]] += size
        delta[last[root] + 1] -= size
    for i, node in enumerate(nodes):
        cost = plan.costs.get(node.name)
        if cost is None:
            continue
        extra[i] = at(cost.scratch)
        if train:
            saved = at(cost.saved)
            delta[i] += saved
            delta[end + 1] -= saved
    live, peak = 0, 0
    for i in range(end + 1):
        live += delta[i]
        peak = max(peak, live + extra[i])
    if train:  # backward holds the gradient of (at most) the largest activation
        peak += max(sizes.values(), default=0)
    return peak


def kept_for_backward(nodes: list[Node], roots: dict[Value, Value]) -> set[Value]:
    """The storage backward keeps (besides `OpCost.saved`): what ops name in `Op.saves`."""
    out: set[Value] = set()
    for node in nodes:
        op = REGISTRY.get(node.op)
        if op is None or (op.kind == "view" and not op.train_copy):
            continue
        if op.saves == "inputs":
            out.update(roots[v] for v in node.inputs)
        elif op.saves == "outputs":
            out.update(roots[Value(node.name, i)] for i in range(len(node.outputs)))
    return out
