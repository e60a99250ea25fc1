"""The library entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlc.errors import NlcError, did_you_mean
from nlc.frontend import load_spec, lower
from nlc.frontend.load import Spec
from nlc.ir import Graph


def load(spec_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Spec, Graph]:
    """Parse, validate and lower a spec file to the IR (shapes inferred, verifier run)."""
    spec = load_spec(spec_path, overrides)
    return spec, lower(spec)


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
) -> Path:
    """Write the package of a loaded spec into `out_dir` (atomically).

    With `onnx`, the package also gets `model.onnx` (seeded weights, dynamic symbolic dims)
    and `onnx.json`, the export report; `opset` None means `nlc.emit.onnx.DEFAULT_OPSET`.
    `verify` runs the file with onnxruntime and compares it with PyTorch: a mismatch fails the
    build with nothing written.
    """
    from nlc.emit import write_package

    reports = cost_report(spec, graph)

    def finish(folder: Path) -> None:
        for name, text in reports.items():
            (folder / name).write_text(text, encoding="utf-8")
        if onnx:
            from nlc.emit.onnx import export_onnx

            report = export_onnx(folder, graph, opset, verify)
            (folder / "onnx.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    return write_package(graph, spec, out_dir, finish)


def cost_report(spec: Spec, graph: Graph) -> dict[str, str]:
    """`report.md` and `report.json` for the spec's `targets` (none when it names none), with
    symbolic dims sized by the spec's `dims` (default 1)."""
    from nlc.analysis.cost import analyze
    from nlc.analysis.report import render_report
    from nlc.targets import load_target

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
    costs = []
    for i, name in enumerate(ast.targets):
        where = spec.path.parent / name if name.endswith((".yaml", ".yml")) else name
        try:
            target = load_target(where)
        except NlcError as e:
            raise NlcError(e.message, e.loc or ast.at("targets", i), e.hint) from None
        costs.append(analyze(graph, target, sizes))
    return render_report(costs)
