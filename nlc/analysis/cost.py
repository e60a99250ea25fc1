"""Roofline cost of a graph on a hardware target: per-node time and the bound that limits it,
latency, throughput, memory, and the largest batch that fits.

The time of one node is a simple function of the target's figures, the one a calibration
step fits (`node_time`):

    compute = sum over op classes c: flops_c / (peak(dtype, c) * efficiency[c])
    memory = (dram_bytes / bandwidth + cached_bytes / cache_bandwidth) / memory_efficiency
    time = launches * launch_overhead + node_overhead[k] + max(compute, memory)
         + (1 - overlap) * min(compute, memory)

with k the node's op class (`Op.op_class`). The target gives memory_efficiency, or else it
is efficiency[k]; cached bytes are free unless it gives a cache bandwidth; overlap is 1 (the
roofline) unless it says how much of the smaller term a core fails to hide. The bytes are the
parameter bytes plus the activation bytes read and written (`Op.cost`); the last-level cache
serves all of them when the whole inference footprint (weights and peak activations) fits in
it, as it does for back-to-back passes, and otherwise the inputs the previous kernel wrote,
when they fit in it. Views cost nothing. A node the target's runtime fuses into the kernel
before it (`nlc.analysis.fusion`) launches nothing, writes nothing, reads only the inputs
that kernel does not hand it, and computes at that kernel's rate. Nodes run one after
another, so the latency is the target's per-call overhead plus the sum of the node times.
"""

from __future__ import annotations

from dataclasses import dataclass

from nlc.analysis.counts import node_counts
from nlc.analysis.fusion import epilogues
from nlc.analysis.memory import Memory, inference_memory, largest_batch, training_memory
from nlc.analysis.plan import Plan, evaluator, running_dtype
from nlc.errors import NlcError, did_you_mean
from nlc.ir import Graph, Value
from nlc.ir.types import FLOAT_DTYPES, norm
from nlc.ops import REGISTRY
from nlc.ops.base import OpCost
from nlc.targets import Target

BATCH = "B"  # the symbolic dim that is the batch size
SEQUENCE = "T"  # the symbolic dim that is the sequence length, for tokens per second
RUN_DTYPES = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class Time:
    """Seconds of one node: the compute and memory rooflines, of which it takes the larger
    plus the part of the smaller that does not overlap it, and the launch overhead on top."""

    compute: float
    memory: float
    overhead: float
    overlap: float = 1.0  # the target's: 1 is the roofline's max, 0 the sum

    @property
    def total(self) -> float:
        shorter = (1 - self.overlap) * min(self.compute, self.memory)
        return self.overhead + max(self.compute, self.memory) + shorter

    @property
    def bound(self) -> str:
        """What limits the node: compute, memory, or launch overhead; none for a view."""
        if not self.total:
            return "none"
        return max((self.compute, "compute"), (self.memory, "memory"), (self.overhead, "overhead"))[
            1
        ]


def node_time(
    target: Target,
    dtype: str,
    op_class: str,
    flops: dict[str, int],
    dram_bytes: int,
    cached_bytes: int,
    launches: int,
) -> Time:
    """The per-node time formula of this module's docstring."""
    compute = sum(
        f / (target.peak_flops(dtype, c) * target.efficiency[c]) for c, f in flops.items() if f
    )
    memory = dram_bytes / (target.memory_bandwidth_gbs * 1e9)
    if target.cache_bandwidth_gbs:
        memory += cached_bytes / (target.cache_bandwidth_gbs * 1e9)
    if memory:  # a view moves nothing, and has no efficiency
        memory /= target.memory_efficiency or target.efficiency[op_class]
    overhead = launches * target.launch_overhead_us
    if launches:
        overhead += target.node_overhead_us.get(op_class, 0.0)
    return Time(compute, memory, overhead * 1e-6, target.overlap)


@dataclass(frozen=True)
class NodeCost:
    """One node's cost; with `node_time(target, dtype, op_class, work, dram_bytes,
    cached_bytes, launches)` a calibration step re-times it on other target figures without
    re-analysing (`retimed`)."""

    name: str
    op: str
    op_class: str
    dtype: str  # the dtype it computes in
    macs: int
    work: dict[str, int]  # FLOPs by op class
    params: int  # parameters it owns (a tied weight counts at its owner)
    weight_bytes: int  # parameter bytes read
    read_bytes: int  # activation bytes read
    written_bytes: int  # activation bytes written
    cached_bytes: int  # of the bytes moved (weights, reads, writes), those the cache serves
    launches: int
    time: Time

    @property
    def flops(self) -> int:
        return sum(self.work.values())

    @property
    def dram_bytes(self) -> int:
        return self.weight_bytes + self.read_bytes + self.written_bytes - self.cached_bytes

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity, FLOPs per byte of memory traffic (None without traffic)."""
        return self.flops / self.dram_bytes if self.dram_bytes else None


@dataclass(frozen=True)
class Precision:
    """Memory at the analysed dims, and the largest batch that fits the target (None when the
    graph has no batch dim), for one precision: f32, or mixed with a half dtype."""

    dtype: str
    inference: Memory
    training: Memory
    max_batch_inference: int | None
    max_batch_training: int | None


@dataclass(frozen=True)
class Cost:
    graph: str
    target: Target
    dims: dict[str, int]
    dtype: str  # the floating-point dtype the nodes compute in
    params: int  # parameters of the model (ties once)
    nodes: list[NodeCost]  # the nodes that run, in order
    precisions: list[Precision]  # f32 first, then mixed precision where the target has it

    @property
    def latency(self) -> float:
        """Seconds of one forward pass."""
        return self.target.call_overhead_us * 1e-6 + sum(n.time.total for n in self.nodes)

    @property
    def train_step(self) -> float:
        """Seconds of one training step: backward costs about twice the forward (for each
        matmul, one for the input gradient and one for the weight gradient)."""
        return 3 * self.latency

    @property
    def throughput(self) -> float:
        """Samples per second of back-to-back forward passes."""
        return self.dims.get(BATCH, 1) / self.latency

    @property
    def tokens_per_s(self) -> float | None:
        return self.throughput * self.dims[SEQUENCE] if SEQUENCE in self.dims else None

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def top(self, k: int = 5) -> list[NodeCost]:
        """The `k` slowest nodes: the bottlenecks."""
        return sorted(self.nodes, key=lambda n: n.time.total, reverse=True)[:k]


def retimed(cost: Cost, target: Target) -> float:
    """`cost.latency` with the figures of `target` (its cache size and runtime as in `cost`):
    what a calibration compares with measured times."""
    total = sum(
        node_time(
            target, n.dtype, n.op_class, n.work, n.dram_bytes, n.cached_bytes, n.launches
        ).total
        for n in cost.nodes
    )
    return target.call_overhead_us * 1e-6 + total


def analyze(
    graph: Graph,
    target: Target,
    dims: dict[str, int] | None = None,
    dtype: str | None = None,
) -> Cost:
    """Cost of `graph` on `target` with the symbolic dims set by `dims` (1 where not given)
    and floating-point tensors in `dtype` (None: the `quantize` pass's fp16/bf16 if it ran,
    else as declared)."""
    dims = _dims(graph, dims or {})
    if dtype is None and graph.meta.get("quantize", {}).get("dtype") in RUN_DTYPES:
        dtype = graph.meta["quantize"]["dtype"]
    if dtype is not None and dtype not in RUN_DTYPES:
        raise NlcError(f"cannot run in dtype {dtype!r}", None, f"choose {', '.join(RUN_DTYPES)}")
    plan = Plan(graph, dtype)
    for running in sorted({running_dtype(t.dtype, dtype) for n in graph for t in n.outputs}):
        if running in FLOAT_DTYPES:
            target.require(running)
    half = dtype if dtype in ("f16", "bf16") else target.half_dtype
    plans = {"f32": plan if dtype == "f32" else Plan(graph, "f32")}
    if half:
        plans[half] = plan if dtype == half else Plan(graph, half)
    return Cost(
        graph.name,
        target,
        dims,
        running_dtype("f32", dtype),
        graph.num_params(),
        _node_costs(plan, target, dims),
        [_precision(p, target, dims) for p in plans.values()],
    )


def _dims(graph: Graph, given: dict[str, int]) -> dict[str, int]:
    symbols = graph.meta.get("symbols", [])
    for key in given:
        if key not in symbols:
            raise NlcError(
                f"{graph.name} has no symbolic dim {key!r} "
                f"(its symbolic dims: {', '.join(symbols) or 'none'})",
                None,
                did_you_mean(key, symbols),
            )
    return {s: given.get(s, 1) for s in symbols}


def _node_costs(plan: Plan, target: Target, dims: dict[str, int]) -> list[NodeCost]:
    at = evaluator(dims)
    graph = plan.graph
    resident = inference_memory(plan, at).total <= target.cache_bytes
    counts = {c.node.name: c for c in node_counts(graph, dims)}
    fused = epilogues(plan, target.runtime)
    rows = []
    hot: set[Value] = set()  # storage the previous kernel wrote
    for node in plan.live:
        if node.op == "input":
            continue
        op = REGISTRY[node.op]
        ins = graph.input_types(node)
        cost = plan.costs[node.name]
        epilogue = fused.get(node.name)
        handed = epilogue.handed if epilogue else frozenset()
        if epilogue:  # the kernel before it computes it, hands it inputs and writes its output
            read = sum(plan.size(t) for i, t in enumerate(ins) if i not in handed)
            work = {epilogue.into: norm(sum(cost.flops.values()))}
            cost = OpCost(work, norm(read), written=0, weights=0, launches=0)
        cached = 0
        if cost.launches or handed:  # a view reads nothing
            cached = sum(
                at(plan.size(t))
                for i, (v, t) in enumerate(zip(node.inputs, ins, strict=True))
                if i not in handed
                and plan.roots[v] in hot
                and at(plan.size(t)) <= target.cache_bytes
            )
            outs = {plan.roots[Value(node.name, i)] for i in range(len(node.outputs))}
            hot = hot | outs if handed else outs
        flops = {c: at(f) for c, f in cost.flops.items()}
        op_class = op.op_class(node.attrs, ins)
        dtype = running_dtype(node.type.dtype, plan.dtype)
        read, written, weights = at(cost.read), at(cost.written), at(cost.weights)
        if resident:
            cached = weights + read + written
        dram = weights + read + written - cached
        rows.append(
            NodeCost(
                name=node.name,
                op=node.op,
                op_class=op_class,
                dtype=dtype,
                macs=counts[node.name].macs,
                work=flops,
                params=counts[node.name].params,
                weight_bytes=weights,
                read_bytes=read,
                written_bytes=written,
                cached_bytes=cached,
                launches=cost.launches,
                time=node_time(target, dtype, op_class, flops, dram, cached, cost.launches),
            )
        )
    return rows


def _precision(plan: Plan, target: Target, dims: dict[str, int]) -> Precision:
    def memory(fn, batch: int) -> int:
        return fn(plan, evaluator({**dims, BATCH: batch})).total

    at = evaluator(dims)
    has_batch = BATCH in dims
    capacity = target.capacity_bytes
    return Precision(
        running_dtype("f32", plan.dtype),
        inference_memory(plan, at),
        training_memory(plan, at),
        largest_batch(lambda b: memory(inference_memory, b), capacity) if has_batch else None,
        largest_batch(lambda b: memory(training_memory, b), capacity) if has_batch else None,
    )
