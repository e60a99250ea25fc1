"""Before and after a compression: per changed layer and in total, parameters, weight bytes
(as stored: a 4-bit layer's packed codes and scales), MACs and the predicted latency on each
target, and, given the compressed model's ONNX file, both models' measured onnxruntime CPU
latency.

Everything is at batch 1 and the spec's other dims: the setting `rank: auto` decides in, and
the one a single request runs in.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlc.analysis.cost import BATCH, NodeCost, analyze
from nlc.analysis.plan import byte_size
from nlc.analysis.report import duration, md_table, num
from nlc.ir import Graph, Node
from nlc.ops.base import param_bytes

if TYPE_CHECKING:
    from nlc.frontend.load import Spec
    from nlc.targets import Target

MEASURE_BUDGET_S = 2.0  # timing both models, in interleaved rounds


def compression_report(
    spec: Spec,
    graph: Graph,
    targets: list[Target],
    onnx_path: Path | None = None,
    opset: int | None = None,
) -> dict[str, str]:
    """`compression.md` and `compression.json` for a graph that `nlc.api.compress` rewrote
    (the dense graph and weights in its meta); with `onnx_path`, the compressed model's file,
    the dense model is exported too (`opset`) and both are timed."""
    dims = run_dims(graph, spec.ast.dims)
    report = compare(graph.meta["dense"], graph, targets, dims)
    if onnx_path is not None:
        report["measured"] = measure(spec, graph, onnx_path, dims, opset)
    return {
        "compression.md": markdown(report),
        "compression.json": json.dumps(report, indent=1) + "\n",
    }


def run_dims(graph: Graph, spec_dims: dict[str, int]) -> dict[str, int]:
    """Batch 1, the spec's size for the other symbolic dims (default 1), at most what the
    position tables cover: a pipeline may shorten a model's context below the spec's `dims`."""
    from nlc.emit.onnx import symbol_limits

    limits = {str(s): n for s, n in symbol_limits(graph).items()}
    return {
        s: 1 if s == BATCH else min(spec_dims.get(s, 1), limits.get(s, spec_dims.get(s, 1)))
        for s in graph.meta["symbols"]
    }


def compare(dense: Graph, graph: Graph, targets: list[Target], dims: dict[str, int]) -> dict:
    """Changed layers (op or parameter shapes differ, or in one graph only) and totals, before
    and after; predicted latencies in microseconds per target name."""
    before = [analyze(dense, t, dims) for t in targets]
    after = [analyze(graph, t, dims) for t in targets]
    by_name = [[{n.name: n for n in c.nodes} for c in side] for side in (before, after)]
    layers = []
    for name in dict.fromkeys([*dense.nodes, *graph.nodes]):
        old, new = dense.nodes.get(name), graph.nodes.get(name)
        if old is not None and new is not None and _same(old, new):
            continue
        costs = [[nodes.get(name) for nodes in side] for side in by_name]
        row: dict[str, Any] = {"node": name}
        for tag, node, side in (("before", old, costs[0]), ("after", new, costs[1])):
            row[f"op_{tag}"] = node.op if node else None
            row[f"params_{tag}"] = side[0].params if side[0] else 0
            row[f"weight_bytes_{tag}"] = weight_bytes(node) if node else 0
            row[f"macs_{tag}"] = side[0].macs if side[0] else 0
        row["predicted_us"] = {
            t.name: {"before": _us(b), "after": _us(a)}
            for t, b, a in zip(targets, *costs, strict=True)
        }
        layers.append(row)
    totals = {
        "params_before": dense.num_params(),
        "params_after": graph.num_params(),
        "weight_bytes_before": sum(map(weight_bytes, dense)),
        "weight_bytes_after": sum(map(weight_bytes, graph)),
        "macs_before": before[0].macs,
        "macs_after": after[0].macs,
        "predicted_us": {
            b.target.name: {"before": b.latency * 1e6, "after": a.latency * 1e6}
            for b, a in zip(before, after, strict=True)
        },
    }
    return {"graph": graph.name, "dims": dims, "layers": layers, "totals": totals}


def measure(
    spec: Spec, graph: Graph, onnx_path: Path, dims: dict[str, int], opset: int | None
) -> dict[str, Any]:
    """Median onnxruntime CPU milliseconds of the dense model (exported to a temporary folder
    with the dense weights, seeded without them) and of `onnx_path`, after warm-up."""
    from nlc.calibrate.timing import REPORT_THREADS, onnx_runner, report_latency
    from nlc.emit import write_package
    from nlc.emit.onnx import ONNX_FILE, export_onnx
    from nlc.weights import write_weights

    dense, weights = graph.meta["dense"], graph.meta["dense_weights"]

    def finish(folder: Path) -> None:
        if weights is not None:
            write_weights(folder, weights)
        export_onnx(folder, dense, opset, verify=False)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_package(dense, spec, Path(tmp) / "dense", finish)
        runs = {
            "before": onnx_runner(folder / ONNX_FILE, dense, dims, REPORT_THREADS),
            "after": onnx_runner(onnx_path, graph, dims, REPORT_THREADS),
        }
        return report_latency(runs, MEASURE_BUDGET_S)


def markdown(report: dict) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in report["dims"].items()) or "no symbolic dims"
    targets = list(report["totals"]["predicted_us"])
    out = [f"# Compression of {report['graph']}", "", f"Predicted and measured at {dims}.", ""]
    headers = ["layer", "op", "params", "weight bytes", "MACs"]
    headers += [f"{t} predicted" for t in targets]
    rows = [
        [
            r["node"],
            _arrow(r["op_before"] or "-", r["op_after"] or "-"),
            _arrow(num(r["params_before"]), num(r["params_after"])),
            _arrow(num(r["weight_bytes_before"]), num(r["weight_bytes_after"])),
            _arrow(num(r["macs_before"]), num(r["macs_after"])),
            *(_us_arrow(r["predicted_us"][t]) for t in targets),
        ]
        for r in report["layers"]
    ]
    t = report["totals"]
    rows.append(
        [
            "**total**",
            "",
            _arrow(num(t["params_before"]), num(t["params_after"])),
            _arrow(num(t["weight_bytes_before"]), num(t["weight_bytes_after"])),
            _arrow(num(t["macs_before"]), num(t["macs_after"])),
            *(_us_arrow(t["predicted_us"][name]) for name in targets),
        ]
    )
    out += md_table((headers, rows))
    m = report.get("measured")
    if m:
        speedup = m["before_ms"] / m["after_ms"]
        out += [
            "",
            f"Measured ({m['runtime']}, {m['threads']} thread, median after warm-up): "
            f"{m['before_ms']:.3g} ms -> {m['after_ms']:.3g} ms ({speedup:.2f}x).",
        ]
    return "\n".join(out) + "\n"


def weight_bytes(node: Node) -> int:
    """Bytes of the node's own parameters in their declared dtypes (a tied one counts where
    it is stored)."""
    return param_bytes([p for p in node.params.values() if p.tied_to is None], byte_size(None))


def _same(a: Node, b: Node) -> bool:
    """Same op, parameter shapes and output shapes (pruning a layer reshapes its users)."""

    def shapes(n: Node):
        return n.op, {k: p.shape for k, p in n.params.items()}, [t.shape for t in n.outputs]

    return shapes(a) == shapes(b)


def _us(cost: NodeCost | None) -> float | None:
    return None if cost is None else cost.time.total * 1e6


def _arrow(before: str, after: str) -> str:
    return before if before == after else f"{before} -> {after}"


def _us_arrow(times: dict[str, float | None]) -> str:
    b, a = (duration(t * 1e-6) if t is not None else "-" for t in (times["before"], times["after"]))
    return _arrow(b, a)
