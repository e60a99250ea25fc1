"""The library entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlc.errors import NlcError, did_you_mean
from nlc.frontend import load_spec, lower
from nlc.frontend.load import Spec
from nlc.frontend.train_check import resolve_parameters
from nlc.ir import Graph
from nlc.weights import Weights, check_weights, read_weights, write_weights

if TYPE_CHECKING:
    from nlc.targets import Target

PassSteps = list[tuple[str, dict[str, Any]]]  # `--pass` steps: name and options


def load(
    spec_path: str | Path,
    overrides: dict[str, Any] | None = None,
    passes: PassSteps | None = None,
) -> tuple[Spec, Graph]:
    """Parse, validate and lower a spec file to the IR (shapes inferred, verifier run), then
    run the spec's `passes:` and then `passes` on the architecture alone (fresh weights)."""
    spec = load_spec(spec_path, overrides)
    graph, _ = compress(spec, lower(spec), None, passes)
    if spec.ast.train is not None:  # `trainable:` and LoRA+ name parameters the passes made
        resolve_parameters(spec.ast.train, graph)
    return spec, graph


def load_trained(
    spec_path: str | Path,
    weights_path: str | Path,
    overrides: dict[str, Any] | None = None,
    passes: PassSteps | None = None,
) -> tuple[Spec, Graph, Weights]:
    """`load` with trained weights (a state dict, a checkpoint or a run folder) that the
    passes transform together with the graph."""
    spec = load_spec(spec_path, overrides)
    graph = lower(spec)
    weights = read_weights(Path(weights_path))
    check_weights(weights, graph, f"the weights of {weights_path}")
    graph, weights = compress(spec, graph, weights, passes)
    assert weights is not None
    return spec, graph, weights


def compress(
    spec: Spec, graph: Graph, weights: Weights | None, passes: PassSteps | None = None
) -> tuple[Graph, Weights | None]:
    """Run the spec's passes, then `passes`; each pass's report rows go to
    `graph.meta["passes"]`. A bad pass or option is reported at its spec item.

    The passes see the spec's first target (`rank: auto` asks it what runs faster) and its
    `dims` (`graph.meta["dims"]`). The graph and weights before the passes stay in
    `graph.meta["dense"]` and `graph.meta["dense_weights"]`, for the before/after report.
    A step with `importance: taylor` sees the loss gradients of the graph it starts from in
    `graph.meta["gradients"]` for its run only (`nlc.emit.gradients`)."""
    steps = [(p.name, p.options, p.at()) for p in spec.ast.passes]
    steps += [(name, options, None) for name, options in passes or []]
    if not steps:
        return graph, weights
    from nlc.passes.manager import run_passes

    graph.meta["dims"] = dict(spec.ast.dims)
    target = _spec_targets(spec)[0] if spec.ast.targets else None
    dense, dense_weights = graph, weights  # run_passes works on copies: these stay as they are
    rows: list[dict[str, Any]] = []
    for name, options, loc in steps:
        start = graph
        try:
            if isinstance(options, dict) and options.get("importance") == "taylor":
                start.meta["gradients"] = _taylor_gradients(spec, start, weights, name)
            graph, weights, report = run_passes(start, weights, [(name, options)], target)
        except NlcError as e:
            raise NlcError(e.message, e.loc or loc, e.hint) from None
        finally:  # the gradients are the step's alone: no later pass or build sees them
            start.meta.pop("gradients", None)
            graph.meta.pop("gradients", None)
        rows += [{"pass": name, **row} for row in report]
    graph.meta["passes"] = rows
    graph.meta["dense"], graph.meta["dense_weights"] = dense, dense_weights
    return graph, weights


def _taylor_gradients(spec: Spec, graph: Graph, weights: Weights | None, name: str) -> Weights:
    """The loss gradients a step with `importance: taylor` scores channels with: on batches
    of the train section's training data, at the trained weights."""
    if weights is None:
        raise NlcError(
            f"pass {name!r}: taylor importance needs trained weights (--weights)",
            None,
            "pass --weights RUN_OR_CHECKPOINT, or choose importance l1, l2 or bn_scale",
        )
    if spec.ast.train is None:
        raise NlcError(
            f"pass {name!r}: taylor importance needs data to compute loss gradients on, and the "
            "spec has no train section",
            None,
            "add a train section (its data and task give the batches and the loss), or choose "
            "importance l1, l2 or bn_scale",
        )
    from nlc.emit.gradients import loss_gradients

    return loss_gradients(spec, graph, weights)


def check(spec_path: str | Path, overrides: dict[str, Any] | None = None) -> Graph:
    return load(spec_path, overrides)[1]


def build(
    spec_path: str | Path,
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    onnx: bool = True,
    opset: int | None = None,
    verify: bool = True,
) -> Path:
    """Build the standalone PyTorch package for a spec into `out_dir` (atomically); the options
    are those of `write_build`."""
    spec, graph = load(spec_path, overrides)
    return write_build(spec, graph, out_dir, onnx, opset, verify)


def write_build(
    spec: Spec,
    graph: Graph,
    out_dir: str | Path,
    onnx: bool = True,
    opset: int | None = None,
    verify: bool = True,
    weights: Weights | None = None,
    quantize: str | None = None,
) -> Path:
    """Write the package of a loaded spec into `out_dir` (atomically).

    `weights` (trained, or transformed by passes) go to `weights.pt`, which loads into the
    package's `Model`, and into model.onnx; without them the ONNX weights are seeded.
    `graph.meta["passes"]`, the passes' report, goes to `passes.json`; after passes,
    `compression.md` and `compression.json` compare the model before and after them
    (`nlc.analysis.compare`), with both models' measured onnxruntime latency when `onnx`.

    With `onnx`, the package also gets `model.onnx` (seeded weights, dynamic symbolic dims)
    and `onnx.json`, the export report; `opset` None means `nlc.emit.onnx.DEFAULT_OPSET`.
    `verify` runs the file with onnxruntime and compares it with PyTorch: a mismatch fails the
    build with nothing written. `quantize` (`nlc.emit.quantize.MODES`), or the `quantize`
    pass at int8, also writes `model.int8.onnx`, `<name>/quantized.py` (torch.ao dynamic int8
    of the linear layers) and their report `quantize.json`; it needs `onnx`. int8-static
    calibrates on batches of the train section's training data when the spec has one. After
    the pass at fp16/bf16 the package runs in that dtype, and model.onnx is fp16 (bf16: fp32,
    as onnx.json says). After the `nf4`/`int4` passes, model.onnx runs their layers as
    onnxruntime's 4-bit MatMul kernels (`onnx.json` `four_bit`).
    """
    from nlc.emit import write_package

    decision = graph.meta.get("quantize", {})  # the `quantize` pass's, see nlc.passes.quantize
    if decision.get("dtype") == "i8":
        quantize = quantize or f"int8-{decision['mode']}"
    linears = decision.get("linears") or [n.name for n in graph if n.op == "linear"]
    if quantize and not onnx:
        raise NlcError(
            f"quantization ({quantize}) works on model.onnx, which this build does not export",
            None,
            "drop --no-onnx, or build without --quantize",
        )

    reports = cost_report(spec, graph)

    def finish(folder: Path) -> None:
        for name, text in reports.items():
            (folder / name).write_text(text, encoding="utf-8")
        if graph.meta.get("passes"):
            text = json.dumps(graph.meta["passes"], indent=2) + "\n"
            (folder / "passes.json").write_text(text, encoding="utf-8")
        if weights is not None:
            write_weights(folder, weights)
        if onnx:
            from nlc.emit.onnx import ONNX_FILE, export_onnx

            if decision.get("dtype") in ("f16", "bf16"):
                from nlc.emit.quantize import export_half_onnx

                report = export_half_onnx(folder, graph, spec, opset, verify)
            else:
                report = export_onnx(folder, graph, opset, verify)
            from nlc.emit.onnx4bit import rewrite_4bit

            four_bit = rewrite_4bit(folder, graph, verify=verify, dims=dict(spec.ast.dims))
            if four_bit:  # int4/NF4 layers now run onnxruntime's 4-bit MatMul kernels
                report["four_bit"] = four_bit
            (folder / "onnx.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if quantize:
            from nlc.emit.quantize import REPORT_FILE, quantize_onnx, quantize_pytorch

            calibration = None
            if quantize == "int8-static" and spec.ast.train is not None:
                from nlc.emit.quantize import pipeline_feeds

                calibration = pipeline_feeds(folder, graph, spec.data_root)
            report = quantize_onnx(folder, graph, quantize, calibration)
            if linears:  # the PyTorch artifact: torch.ao quantizes linear layers only
                report["pytorch"] = quantize_pytorch(folder, graph, linears)
            text = json.dumps(report, indent=2) + "\n"
            (folder / REPORT_FILE).write_text(text, encoding="utf-8")
        if "dense" in graph.meta:
            from nlc.analysis.compare import compression_report
            from nlc.targets import load_target

            targets = _spec_targets(spec) or [load_target("cpu")]
            onnx_path = folder / ONNX_FILE if onnx else None
            for name, text in compression_report(spec, graph, targets, onnx_path, opset).items():
                (folder / name).write_text(text, encoding="utf-8")

    return write_package(graph, spec, out_dir, finish)


def cost_report(spec: Spec, graph: Graph) -> dict[str, str]:
    """`report.md` and `report.json` for the spec's `targets` (none when it names none), with
    symbolic dims sized by the spec's `dims` (default 1)."""
    from nlc.analysis.cost import analyze
    from nlc.analysis.report import render_report

    ast = spec.ast
    if not ast.targets:
        return {}
    for name in ast.dims:
        if name not in graph.meta["symbols"]:
            raise NlcError(
                f"dims: {name!r} is not a symbolic dim of the inputs",
                ast.key_at("dims", name),
                did_you_mean(name, graph.meta["symbols"])
                or f"symbolic dims: {', '.join(graph.meta['symbols']) or 'none'}",
            )
    sizes = {s: ast.dims.get(s, 1) for s in graph.meta["symbols"]}
    return render_report([analyze(graph, target, sizes) for target in _spec_targets(spec)])


def _spec_targets(spec: Spec) -> list[Target]:
    """The spec's `targets`, files relative to the spec; errors point at the entry."""
    from nlc.targets import load_target

    targets = []
    for i, name in enumerate(spec.ast.targets):
        where = spec.path.parent / name if name.endswith((".yaml", ".yml")) else name
        try:
            targets.append(load_target(where))
        except NlcError as e:
            raise NlcError(e.message, e.loc or spec.ast.at("targets", i), e.hint) from None
    return targets
