"""Time a model the way the calibrated target says it runs: onnxruntime on the CPU with a
fixed number of threads, or eager PyTorch.

A time is the median of repeated runs, as other processes on a shared host add spikes that
a mean would absorb; and the runs come in rounds spread over the whole measurement, of which
the fastest median counts, as a busy stretch of the host slows a whole round down and
nothing ever makes a model faster."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from nlc.ir import Graph
from nlc.ir.types import sym

WARMUP = 3  # runs before timing: allocator, thread pool and weight pre-packing settle


def median_time(fn: Callable[[], object], budget_s: float, min_runs: int = 5) -> float:
    """Median seconds of `fn()` over repeated calls, for about `budget_s` and at least
    `min_runs` calls after the warm-up."""
    for _ in range(WARMUP):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def best_of_rounds(
    runs: dict[str, Callable[[], object]], budget_s: float, rounds: int = 3
) -> dict[str, list[float]]:
    """The median seconds of each call in each of `rounds` passes over all of them, for
    about `budget_s` in all; the time of a call is the least of its medians."""
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            medians[name].append(median_time(run, budget_s / rounds / len(runs)))
    return medians


REPORT_THREADS = 1  # reports time on one intra-op thread: no figure depends on free cores


def report_latency(runs: dict[str, Callable[[], object]], budget_s: float) -> dict[str, object]:
    """What build reports say of models timed side by side (`best_of_rounds`): the runtime,
    the threads (calls made with `onnx_runner(..., REPORT_THREADS)`), and `<name>_ms`."""
    medians = best_of_rounds(runs, budget_s)
    ms = {f"{name}_ms": min(times) * 1e3 for name, times in medians.items()}
    return {"runtime": "onnxruntime CPU", "threads": REPORT_THREADS, **ms}


def onnx_runner(path: Path, graph: Graph, dims: dict[str, int], threads: int | None):
    """A call that runs `path` once under onnxruntime with inputs at `dims` (all graph
    optimisations on, `threads` intra-op threads or all cores, sequential execution)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: one per core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {n.name: t.numpy() for n, t in zip(graph.inputs, _inputs(graph, dims), strict=True)}
    return lambda: session.run(None, feeds)


def torch_runner(package_dir: Path, graph: Graph, dims: dict[str, int], threads: int | None):
    """A call that runs the generated package once in eager PyTorch, without autograd."""
    import torch

    from nlc.emit.onnx import imported_package, seeded_model

    if threads:
        torch.set_num_threads(threads)
    with imported_package(package_dir, graph.name) as package:
        model = seeded_model(package)
    args = _inputs(graph, dims)

    def run():
        with torch.inference_mode():
            model(*args)

    return run


def _inputs(graph: Graph, dims: dict[str, int]):
    from nlc.emit.onnx import example_inputs

    return example_inputs(graph, {sym(k): v for k, v in dims.items()}, seed=0)
