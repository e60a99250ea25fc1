"""`nlc build --quantize` writes model.int8.onnx and quantize.json: smaller, close to the fp32
file, timed; embeddings stay fp32; bad combinations are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

import nlc
from nlc.cli import app
from nlc.emit.onnx import example_inputs, example_sizes, symbol_limits
from nlc.emit.quantize import pipeline_feeds, quantize_onnx
from nlc.errors import NlcError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRANSFORMER = ["vocab=100", "dim=64", "heads=4", "layers=1", "context=32"]


def _build(tmp_path: Path, name: str, mode: str, settings=()) -> tuple[dict, str]:
    args = ["build", str(EXAMPLES / f"{name}.yaml"), "-o", str(tmp_path / name)]
    args += [a for s in settings for a in ("--set", s)]
    result = CliRunner().invoke(app, [*args, "--quantize", mode])
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / name / "quantize.json").read_text())
    return report, result.stdout


def _check_report(report: dict, mode: str) -> None:
    assert report["mode"] == mode and report["file"] == "model.int8.onnx"
    assert report["bytes"]["int8"] < report["bytes"]["fp32"]
    assert report["latency"]["fp32_ms"] > 0 and report["latency"]["int8_ms"] > 0
    assert len(report["checks"]) == 2  # both verification sizes
    assert 0 <= report["max_relative_error"] < 0.2


def test_mlp_with_wide_linears(tmp_path):
    report, stdout = _build(tmp_path, "mlp_digits", "int8-dynamic", ["width=512"])
    _check_report(report, "int8-dynamic")
    assert report["size_ratio"] >= 2 and report["max_relative_error"] < 0.05
    model = onnx.load(tmp_path / "mlp_digits" / "model.int8.onnx")
    assert "Gemm" not in {n.op_type for n in model.graph.node}  # all three linears quantized
    assert "model.int8.onnx (int8-dynamic):" in stdout and "x smaller" in stdout


def test_transformer_keeps_embeddings_fp32(tmp_path):
    report, _ = _build(tmp_path, "gpt2_small", "int8-dynamic", TRANSFORMER)
    _check_report(report, "int8-dynamic")
    model = onnx.load(tmp_path / "gpt2_small" / "model.int8.onnx")
    tables = {t.name: t.data_type for t in model.graph.initializer}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert gathers and all(tables[n.input[0]] == onnx.TensorProto.FLOAT for n in gathers)
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}


def test_cnn_dynamic_and_static(tmp_path):
    report, _ = _build(tmp_path, "cnn_digits", "int8-dynamic")
    _check_report(report, "int8-dynamic")
    out = tmp_path / "cnn_digits"
    ops = {n.op_type for n in onnx.load(out / "model.int8.onnx").graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops  # dynamic mode keeps convolutions fp32
    _, graph = nlc.load(EXAMPLES / "cnn_digits.yaml")
    static = quantize_onnx(out, graph, "int8-static")
    _check_report(static, "int8-static")
    assert static["calibration"] == {"data": "random", "batches": 16}
    assert json.loads((out / "quantize.json").read_text()) == static
    ops = {n.op_type for n in onnx.load(out / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    size = example_sizes(graph, symbol_limits(graph))[1]
    batches = [{"x": example_inputs(graph, size, seed)[0]} for seed in range(3)]
    given = quantize_onnx(out, graph, "int8-static", calibration=batches)
    _check_report(given, "int8-static")
    assert given["calibration"] == {"data": "given", "batches": 3}
    with pytest.raises(NlcError, match="unknown quantization mode 'int4'"):
        quantize_onnx(out, graph, "int4")


def test_static_calibrates_on_the_train_sections_data(tmp_path):
    spec, graph = nlc.load(EXAMPLES / "cnn_digits.yaml")
    (batch,) = pipeline_feeds(
        nlc.build(EXAMPLES / "cnn_digits.yaml", tmp_path / "p"), graph, spec.data_root
    )[:1]
    x = batch["x"]
    assert x.shape[1:] == (1, 8, 8) and x.shape[0] == spec.ast.train.batch_size
    assert 0 <= x.min() < x.max() <= 1  # digits pixels, not random normals
    report, _ = _build(tmp_path, "cnn_digits", "int8-static")
    assert report["calibration"] == {"data": "given", "batches": 8}


def test_quantize_needs_onnx(tmp_path):
    spec = str(EXAMPLES / "mlp_digits.yaml")
    out = tmp_path / "out"
    args = ["build", spec, "-o", str(out), "--no-onnx"]
    result = CliRunner().invoke(app, [*args, "--quantize", "int8-dynamic"])
    assert result.exit_code == 2 and "drop --no-onnx" in result.stderr
    assert not out.exists()
    result = CliRunner().invoke(app, ["build", spec, "-o", str(out), "--quantize", "int4"])
    assert result.exit_code == 2 and "'int4' is not a mode" in result.stderr
    assert not out.exists()
