"""`rank: auto`: per layer, a rank within an error budget that runs faster than the dense layer
on the target, timed by onnxruntime on this host or predicted by the cost model.

With weights, the smallest rank within `max_error` comes first: the smallest candidate i/full
of the pass's full rank whose decomposition's relative error is at most `max_error`, found by
galloping and bisection with the decomposition itself as the oracle (the error falls as the rank
grows; the full rank is exact; a pass with a closed-form bound on the error gives the search its
start). Every larger rank is within the budget too, so that rank and up to CANDIDATES - 1
multiples of ALIGN above it, up to the largest rank with fewer parameters than the dense layer,
are timed: the layer takes the fastest, and of those within TIE of it the largest rank (the same
speed for less error). Without weights
there is no error to bound, so it is the largest of STRUCTURAL_FRACTIONS of the full rank that
is faster. Either way a layer no candidate makes faster by `min_speedup` stays dense, and the
report row says why, with the times.

Times: `measure: auto` measures where the target is the host (a calibrated onnxruntime CPU
target such as `cpu`): the dense layer and each candidate, each alone (its inputs and the node,
batch 1), exported to ONNX and timed side by side in interleaved rounds. A cost model prices
nodes by their FLOPs and bytes, and onnxruntime spends microseconds per node on small maps
whatever its size, which is what decides between one convolution and three. Other targets use
the cost model's prediction (`measure: false` forces it; `measure: true` on another target is
an error: the host cannot time it).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictBool

from nlc.errors import NlcError
from nlc.ir import Graph, Node, Value
from nlc.ops.base import NoAttrs
from nlc.passes.base import replace_op
from nlc.passes.select import Selection

if TYPE_CHECKING:
    import torch

    from nlc.passes.decompose import Plan, Planner
    from nlc.targets import Target

STRUCTURAL_FRACTIONS = (0.75, 0.5, 0.25)
DEFAULT_TARGET = "cpu"
CANDIDATES = 5  # ranks timed per layer with weights: the smallest within budget and larger ones
ALIGN = 8  # the larger candidates are multiples of this (see `_spread`)
TIE = 0.05  # times within 5% of the fastest count as as fast (the host's noise is about that)
# Iterations at most of an iterative decomposition (CP's ALS, Tucker's HOOI) at every rank
# `auto` tries, the chosen one included (`n_iter_max` if lower): a CNN decides in seconds, its
# error somewhat above what more iterations reach, which fine-tuning recovers.
AUTO_ITERATIONS = 20
MEASURE_BUDGET_S = 0.05  # seconds of onnxruntime timing per model timed (dense or a candidate)
MEASURE_ROUNDS = 5


class Decomposition(Selection):
    """The options every decomposition pass has besides its rank: those of `rank: auto`."""

    max_error: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="rank auto: the relative reconstruction error (Frobenius) allowed per layer",
    )
    min_speedup: float = Field(
        default=1.0,
        ge=1,
        description="rank auto: factorize only where the dense/factorized latency ratio "
        "reaches this",
    )
    target: str | None = Field(
        default=None,
        description="rank auto: the hardware target whose latency decides (default: the spec's "
        "first target, else cpu)",
    )
    measure: StrictBool | Literal["auto"] = Field(
        default="auto",
        description="rank auto: time each layer dense and factorized in onnxruntime on this host "
        "(true), use the cost model's prediction (false), or measure where the target is the "
        "host, a calibrated onnxruntime CPU target (auto); measured choices follow the host's "
        "timings, so a busy machine may choose other ranks: passes.json records them, and false "
        "makes the build reproducible",
    )


def auto_plan(
    graph: Graph,
    node: Node,
    tensors: dict[str, torch.Tensor] | None,
    options: Decomposition,
    plan: Planner,
    full: int,
    target: Target | None,
    start: int = 1,
) -> tuple[Plan | str, dict[str, Any]]:
    """The plan for `node` at the automatic rank, or why it stays dense, with the report
    fields that back the choice: target, how it was timed, microseconds dense and factorized
    (and the cost model's where measured), the candidates' times and why the rank."""
    target = _target(options, target)
    measured = _measures(options, target)
    at = _Ranks(graph, node, tensors, options, plan, full)
    shape = _Ranks(graph, node, None, options, plan, full)  # op and attributes, no weights
    if tensors is None:
        ranks = sorted({max(1, round(f * full)) for f in STRUCTURAL_FRACTIONS}, reverse=True)
    else:
        smallest = at.smallest_within(options.max_error, start)
        ranks = _spread(smallest, _largest_smaller(graph, node, shape, smallest))
    plans = {i: shape(i) for i in ranks}
    for p in plans.values():
        if isinstance(p, str):  # the pass cannot rewrite this node at any rank
            return p, {}
    plans = {i: p for i, p in plans.items() if _params(graph, node, p) < node.num_params()}
    extra: dict[str, Any] = {"target": target.name, "timing": "measured" if measured else "model"}
    if not plans:
        return "kept dense: no rank within max_error has fewer parameters than the layer", extra
    predicted = [node_seconds(graph, node, target)]
    predicted += [node_seconds(graph, node, target, p) for p in plans.values()]
    seconds = measure_seconds(graph, node, list(plans.values()), target) if measured else predicted
    dense, times = seconds[0], dict(zip(plans, seconds[1:], strict=True))
    extra["dense_us"] = _us(dense)
    if measured:
        extra["predicted_dense_us"] = _us(predicted[0])
    extra["candidates_us"] = [[plans[i].rank, _us(t)] for i, t in times.items()]
    while True:
        pick, why = choose_rank(times, dense, options.min_speedup, tensors is not None)
        if pick is None or tensors is None:
            break
        final = at(pick)
        if isinstance(final, str) or final.error <= options.max_error:
            break
        del times[pick]  # ALS is not exactly monotone in the rank: choose among the others
    if pick is None:
        fastest = min(times.values())
        why = f"kept dense: factorized {_us(fastest)} us vs dense {_us(dense)} us on {target.name}"
        if options.min_speedup > 1:
            why += f" (min_speedup {options.min_speedup})"
        if tensors is not None:  # the smallest rank within max_error, and its error
            extra["rank"], extra["error"] = at(smallest).rank, at(smallest).error
        return why, extra
    extra["factorized_us"] = _us(times[pick])
    if measured:
        extra["predicted_factorized_us"] = _us(predicted[1 + list(plans).index(pick)])
    extra["choice"] = why
    return (plans[pick] if tensors is None else final), extra


def choose_rank(
    times: dict[int, float], dense: float, min_speedup: float, bounded: bool
) -> tuple[int | None, str]:
    """The rank (a key of `times`, seconds per candidate) to take, or None when none is
    faster than `dense` by `min_speedup`, and why. `bounded`: every candidate is within the
    error budget, so the fastest wins (ties within TIE: the largest rank); otherwise (no
    weights, no error to bound) the largest rank that is faster."""
    faster = {i: t for i, t in times.items() if t * min_speedup < dense}
    if not faster:
        return None, ""
    if not bounded:
        return max(faster), "the largest fraction faster than dense"
    best = min(faster.values())
    pick = max(i for i, t in faster.items() if t <= best * (1 + TIE))
    return pick, (
        f"largest rank within {TIE:.0%} of the fastest of {len(times)} within max_error "
        f"({len(faster)} faster than dense)"
    )


class _Ranks:
    """Plans of one node at candidate ranks i/full, each computed once; with weights, an
    iterative decomposition runs at most AUTO_ITERATIONS iterations."""

    def __init__(self, graph, node, tensors, options, plan: Planner, full: int) -> None:
        self.full = full
        self.cache: dict[int, Plan | str] = {}
        search = options
        if tensors is not None and "n_iter_max" in type(options).model_fields:
            search = options.model_copy(
                update={"n_iter_max": min(options.n_iter_max, AUTO_ITERATIONS)}
            )
        self.make: Callable[[int], Plan | str] = lambda i: plan(
            graph, node, tensors, _at_rank(search, i, full)
        )

    def __call__(self, i: int) -> Plan | str:
        if i not in self.cache:
            self.cache[i] = self.make(i)
        return self.cache[i]

    def within(self, i: int, max_error: float) -> bool:
        p = self(i)
        return isinstance(p, str) or p.error <= max_error  # a str: no rank works, stop

    def smallest_within(self, max_error: float, start: int = 1) -> int:
        """The smallest rank within `max_error` from `start` (a rank no error bound rules out),
        in steps of ALIGN where the full rank has at least four (only those run fast, see
        `_spread`): galloping up, then bisection, few decompositions when `start` is close.
        The full rank is exact, so always within."""
        step = ALIGN if self.full >= 4 * ALIGN else 1

        def within(u: int) -> bool:
            return self.within(min(self.full, u * step), max_error)

        units = -(-self.full // step)
        lo = hi = -(-start // step)
        gallop = 1
        while hi < units and not within(hi):
            lo, hi, gallop = hi + 1, min(units, hi + gallop), gallop * 2
        return min(self.full, first_holding(lo, hi, within) * step)


def first_holding(lo: int, hi: int, holds: Callable[[int], bool]) -> int:
    """The least i in [lo, hi] where `holds` (false then true as i grows) holds; hi if none
    below it does."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid + 1, hi)
    return lo


def _largest_smaller(graph: Graph, node: Node, shape: _Ranks, lo: int) -> int:
    """The largest rank in [lo, full] whose factorized layer has fewer parameters than the
    dense one (lo when none has: the caller drops it)."""

    def too_big(i: int) -> bool:
        p = shape(i)
        return i > shape.full or isinstance(p, str) or _params(graph, node, p) >= node.num_params()

    return max(lo, first_holding(lo, shape.full + 1, too_big) - 1)


def _spread(lo: int, hi: int) -> list[int]:
    """The ranks to time in [lo, hi]: lo, the smallest within the budget, and multiples of
    ALIGN (onnxruntime's convolution and matmul kernels work in blocks of channels: on an 8x8
    map a Tucker core of rank 43 ran slower than one of 48), evenly chosen when there are more
    than CANDIDATES - 1; hi when there is none."""
    aligned = [i for i in range(lo + 1, hi + 1) if i % ALIGN == 0] or ([hi] if hi > lo else [])
    n = CANDIDATES - 1
    if len(aligned) > n:
        aligned = [aligned[round(k * (len(aligned) - 1) / (n - 1))] for k in range(n)]
    return [lo, *aligned]


def _at_rank(options: Decomposition, i: int, full: int) -> Decomposition:
    return options.model_copy(update={"rank": i / full})


def _params(graph: Graph, node: Node, plan: Plan) -> int:
    return node_alone(graph, node, plan).num_params()


def node_seconds(graph: Graph, node: Node, target: Target, plan: Plan | None = None) -> float:
    """Predicted seconds of `node` alone (or of its rewrite by `plan`) on `target`: a graph of
    just its inputs and the node, analysed at batch 1 and the spec's other dims."""
    from nlc.analysis.cost import analyze

    alone = node_alone(graph, node, plan)
    return sum(n.time.total for n in analyze(alone, target, _dims(graph, alone)).nodes)


def measure_seconds(graph: Graph, node: Node, plans: Sequence[Plan], target: Target) -> list[float]:
    """Measured seconds of `node` alone, then of each rewrite by `plans`, in onnxruntime on this
    host with the target's threads, timed side by side in MEASURE_ROUNDS interleaved rounds, the
    least of each one's medians (`best_of_rounds`). One ONNX export holds them all (seeded
    weights: the values do not change the time), each then cut out as a model of its own."""
    import onnx
    from onnx.utils import Extractor

    from nlc.calibrate.timing import best_of_rounds, onnx_runner
    from nlc.emit import write_package
    from nlc.emit.onnx import ONNX_FILE, export_onnx
    from nlc.frontend.ast import ModelSpec
    from nlc.frontend.load import Spec

    # A package needs a spec for its spec.yaml: this one only names the layer, as the package
    # is only exported and timed.
    doc = {"nlc": 1, "name": "layer", "inputs": {"x": {"shape": [1]}}, "graph": ["relu"]}
    spec = Spec(ModelSpec.model_validate(doc), Path("layer.yaml"), doc)
    copies = node_alone(graph, node, None, plans)
    dims = _dims(graph, copies)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_package(
            copies, spec, Path(tmp) / "pkg", lambda f: export_onnx(f, copies, None, False)
        )
        cut = Extractor(onnx.load(folder / ONNX_FILE))
        inputs = [n.name for n in copies.inputs]
        for output in copies.outputs:
            path = Path(tmp) / f"{output}.onnx"
            onnx.save(cut.extract_model(inputs, [output]), path)
            runs[output] = onnx_runner(path, copies, dims, target.threads)
        medians = best_of_rounds(runs, MEASURE_BUDGET_S * len(runs), MEASURE_ROUNDS)
    return [min(medians[k]) for k in runs]


def node_alone(
    graph: Graph, node: Node, plan: Plan | None = None, more: Sequence[Plan | None] = ()
) -> Graph:
    """A graph of `node`'s inputs and a copy of `node` named `layer`, outside any block
    (rewritten by `plan`), its output `y` the graph's: what is timed or built to time one layer
    by itself. Each of `more` adds another copy on the same inputs (`layer1`, output `y1`, ...)
    rewritten by that plan."""
    alone = Graph(f"{graph.name}_node", meta={"symbols": graph.meta.get("symbols", [])})
    names = [f"_in{i}" for i in range(len(node.inputs))]
    for name, v in zip(names, node.inputs, strict=True):
        alone.add(Node(name, "input", NoAttrs(), [], [graph.type_of(v)]))
    for k, p in enumerate([plan, *more]):
        suffix = str(k or "")
        copy = dataclasses.replace(
            node, name=f"layer{suffix}", inputs=[Value(n) for n in names], frames=()
        )
        alone.add(copy)
        alone.outputs[f"y{suffix}"] = Value(copy.name)
        if p is not None:
            replace_op(alone, copy, p.op, p.attrs)
    return alone


def _dims(graph: Graph, alone: Graph) -> dict[str, int]:
    """The spec's dims that `alone` uses, at batch 1."""
    from nlc.analysis.cost import BATCH

    dims = {k: v for k, v in graph.meta.get("dims", {}).items() if k in alone.meta["symbols"]}
    if BATCH in alone.meta["symbols"]:
        dims[BATCH] = 1
    return dims


def _measures(options: Decomposition, target: Target) -> bool:
    host = target.kind == "cpu" and target.runtime == "onnxruntime" and target.calibrated
    if options.measure is True and not host:
        raise NlcError(
            f"measure: true times layers on this host's CPU in onnxruntime, and target "
            f"{target.name} is not it",
            None,
            "use measure: auto (or false) for the cost model's prediction on that target, or "
            "a calibrated onnxruntime CPU target (cpu)",
        )
    return host if options.measure == "auto" else options.measure


def _target(options: Decomposition, given: Target | None) -> Target:
    from nlc.targets import load_target

    if options.target is not None:
        return load_target(options.target)
    return given or load_target(DEFAULT_TARGET)


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)
