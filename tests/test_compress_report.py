"""The build's before/after compression report: per-layer rows, totals that match the graphs,
and measured onnxruntime latencies only when ONNX was exported."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

import nlc
from nlc.analysis.cost import analyze
from nlc.api import write_build
from nlc.frontend.load import parse_passes
from nlc.targets import load_target

TINY = {
    "nlc": 1,
    "name": "tiny",
    "inputs": {"x": {"shape": ["B", 3, 8, 8]}},
    "targets": ["cpu", "rtx3060"],
    "graph": [
        {"op": "conv2d", "name": "c1", "out": 8, "kernel": 3, "padding": 1},
        "relu",
        "global_avgpool",
        {"op": "linear", "name": "fc", "out": 32},
        "relu",
        {"op": "linear", "name": "head", "out": 4},
    ],
}


def _build(tmp_path: Path, onnx: bool, passes: list[str]) -> tuple[Path, nlc.ir.Graph]:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    spec, graph = nlc.load(spec_path, passes=parse_passes(passes))
    out = write_build(spec, graph, tmp_path / f"out_{onnx}", onnx=onnx, verify=False)
    return out, graph


def test_totals_match_the_graphs_and_nothing_is_measured_without_onnx(tmp_path: Path):
    out, graph = _build(tmp_path, False, ["svd:rank=4,select=fc"])
    report = json.loads((out / "compression.json").read_text())
    dense = graph.meta["dense"]
    (row,) = report["layers"]
    assert (row["node"], row["op_before"], row["op_after"]) == ("fc", "linear", "lowrank_linear")
    assert row["params_after"] < row["params_before"] == 8 * 32 + 32
    totals = report["totals"]
    assert (totals["params_before"], totals["params_after"]) == (
        dense.num_params(),
        graph.num_params(),
    )
    for name in ("cpu", "rtx3060"):
        target = load_target(name)
        before, after = analyze(dense, target, {"B": 1}), analyze(graph, target, {"B": 1})
        assert (totals["macs_before"], totals["macs_after"]) == (before.macs, after.macs)
        assert totals["predicted_us"][name]["after"] == after.latency * 1e6
        assert set(row["predicted_us"][name]) == {"before", "after"}
    assert "measured" not in report
    text = (out / "compression.md").read_text()
    assert "| fc | linear -> lowrank_linear |" in text and "Measured" not in text


def test_measured_latencies_with_onnx(tmp_path: Path):
    out, _ = _build(tmp_path, True, ["svd:rank=auto"])
    measured = json.loads((out / "compression.json").read_text())["measured"]
    assert measured["threads"] == 1
    assert measured["before_ms"] > 0 and measured["after_ms"] > 0
    assert "Measured (onnxruntime CPU, 1 thread" in (out / "compression.md").read_text()


def test_no_report_without_passes(tmp_path: Path):
    out, graph = _build(tmp_path, False, [])
    assert "dense" not in graph.meta and not (out / "compression.md").exists()
