"""The `quantize` pass: none is an identity, fp16/bf16 set the parameters' dtype and cast the
weights (the IR's tensor types stay: the cost model runs the graph in the recorded dtype),
int8 marks linear layers for the CPU artifacts, auto follows the cost model per target, and
the builds it drives run within dtype-derived error bounds."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from strategies import any_specs

import nlc
from nlc.api import load, write_build
from nlc.emit.onnx import imported_package, seeded_model
from nlc.errors import NlcError
from nlc.ir.verify import verify
from nlc.passes import PASSES, run_passes
from nlc.passes.quantize import _choose, predict
from nlc.targets import load_target

EXAMPLES = settings(max_examples=25, deadline=None)
MLP = {
    "nlc": 1,
    "name": "qmlp",
    "inputs": {"x": {"shape": ["B", 64]}},
    "graph": [
        {"op": "linear", "name": "fc1", "out": 128},
        "relu",
        {"op": "linear", "name": "fc2", "out": 128},
        "relu",
        {"op": "linear", "name": "head", "out": 10},
    ],
}


def _seeded_weights(graph) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn(p.shape) for k, p in graph.parameters()}


def _interface(graph) -> list[str]:
    return [str(n.type) for n in graph.inputs] + [
        str(graph.type_of(v)) for v in graph.outputs.values()
    ]


@EXAMPLES
@given(case=any_specs)
def test_none_is_an_identity_and_fp16_only_changes_parameter_dtypes(builder, case):
    _, graph = nlc.load(builder.write_spec(case.spec))
    weights = _seeded_weights(graph)
    same, w, _ = run_passes(graph, weights, [("quantize", {"dtype": "none"})])
    assert [(n.name, n.op, n.outputs, n.params) for n in same] == [
        (n.name, n.op, n.outputs, n.params) for n in graph
    ]
    assert "quantize" not in same.meta and all(w[k] is weights[k] for k in weights)
    half, w16, _ = run_passes(graph, weights, [("quantize", {"dtype": "fp16"})])
    verify(half)
    assert _interface(half) == _interface(graph)  # tensor types stay f32 in the IR
    assert {p.dtype for _, p in half.parameters()} <= {"f16"}
    assert half.meta["quantize"]["dtype"] == "f16"
    assert all(w16[k].dtype == torch.float16 and torch.equal(w16[k], weights[k].half()) for k in w)


def test_int8_marks_the_selected_linears(builder):
    _, graph = nlc.load(builder.write_spec(MLP))
    new, _, report = run_passes(graph, None, [("quantize", {"dtype": "int8", "select": "fc*"})])
    assert new.meta["quantize"] == {
        "dtype": "i8",
        "mode": "dynamic",
        "linears": ["fc1", "fc2"],
        "reason": "requested",
    }
    assert [r["node"] for r in report[1:]] == ["fc1", "fc2"]
    with pytest.raises(NlcError, match="matches no linear"):
        run_passes(graph, None, [("quantize", {"dtype": "int8", "select": "conv*"})])


@pytest.mark.parametrize(
    ("target", "dtype", "message"),
    [
        ("rx580", "bf16", r"rx580 has no bf16"),
        ("rx580", "int8", r"rx580 has no int8"),
        ("cpu", "fp16", r"cpu has no fp16"),
    ],
)
def test_unsupported_dtype_is_an_error(builder, target, dtype, message):
    _, graph = nlc.load(builder.write_spec(MLP))
    with pytest.raises(NlcError, match=message) as e:
        run_passes(graph, None, [("quantize", {"dtype": dtype})], load_target(target))
    if target == "rx580" and dtype == "bf16":
        assert "fp16 (storage only, no speed-up on this target)" in e.value.hint


def test_unsupported_dtype_error_names_the_spec_line(tmp_path: Path):
    spec = tmp_path / "q.yaml"
    doc = {**MLP, "targets": ["rx580"], "passes": [{"pass": "quantize", "dtype": "bf16"}]}
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(NlcError, match="rx580 has no bf16") as e:
        load(spec)
    assert e.value.loc is not None and e.value.loc.line > 1


FOUR_BIT = tuple(p for p in ("nf4", "int4") if p in PASSES)  # weight-only, when registered


@pytest.mark.parametrize(
    ("spec", "target", "expected"),
    [
        # RX 580: no fp16 compute; bandwidth falls with fp16 storage, more so with 4-bit weights
        ("examples/gpt2_small.yaml", "rx580", FOUR_BIT[:1] or ("fp16",)),
        ("examples/gpt2_small.yaml", "rtx3060", ("fp16", *FOUR_BIT)),  # no GPU int8 artifact
        ("examples/gpt2_small.yaml", "cpu", ("int8-dynamic",)),  # linear-heavy
        ("examples/cnn_digits.yaml", "cpu", ("int8-static",)),  # convolutions need static
    ],
)
def test_auto_picks_what_the_cost_model_predicts(spec, target, expected):
    _, graph = load(Path(__file__).parents[1] / spec)
    predicted = predict(graph, load_target(target))
    choice = _choose(predicted)
    assert choice in expected and predicted[choice] < predicted["none"]
    assert predicted[choice] == min(predicted.values()) or choice in ("none", "fp16")
    new, _, report = run_passes(graph, None, [("quantize", {})], load_target(target))
    assert report[0]["dtype"] == "auto" and report[0]["decision"] in (choice, _IR.get(choice))
    assert set(report[0]["predicted_ms"]) == set(predicted)
    if choice in _IR:
        assert new.meta["quantize"]["dtype"] == _IR[choice]


_IR = {"fp16": "f16", "int8-dynamic": "i8", "int8-static": "i8"}


def test_fp16_halves_predicted_weight_bytes_and_time_on_a_gpu(builder):
    from nlc.analysis.cost import analyze

    _, graph = nlc.load(builder.write_spec(MLP))
    half, _, _ = run_passes(graph, None, [("quantize", {"dtype": "fp16"})])
    gpu = load_target("rtx3060")
    dtype = half.meta["quantize"]["dtype"]
    before, after = analyze(graph, gpu), analyze(half, gpu, dtype=dtype)
    assert sum(n.weight_bytes for n in after.nodes) * 2 == sum(n.weight_bytes for n in before.nodes)
    assert after.latency < before.latency


def test_fp16_build_runs_in_fp16_close_to_fp32(builder, tmp_path: Path):
    spec, graph = nlc.load(builder.write_spec(MLP))
    weights = _seeded_weights(graph)
    half, w16, _ = run_passes(graph, weights, [("quantize", {"dtype": "fp16"})])
    out = write_build(spec, half, tmp_path / "half", weights=w16)
    report = json.loads((out / "onnx.json").read_text())
    assert report["dtype"] == "f16" and report["bytes"] < 0.6 * report["bytes_fp32"]
    x = torch.randn(4, 64)
    with imported_package(out, half.name) as package:
        model = seeded_model(package, out)
        assert next(model.parameters()).dtype == torch.float16
        got = model(x.half()).float()
    ref = x  # the fp32 reference, from the same weights
    for name in ("fc1", "fc2", "head"):
        ref = torch.nn.functional.linear(ref, weights[f"{name}.weight"], weights[f"{name}.bias"])
        ref = ref.relu() if name != "head" else ref
    eps = float(np.finfo(np.float16).eps)
    assert (got - ref).abs().max() <= 64 * eps * ref.abs().max()


def test_int8_build_writes_the_pytorch_helper_with_bounded_error(builder, tmp_path: Path):
    spec, graph = nlc.load(builder.write_spec(MLP))
    weights = _seeded_weights(graph)
    marked, _, _ = run_passes(graph, weights, [("quantize", {"dtype": "int8"})])
    out = write_build(spec, marked, tmp_path / "int8", weights=weights)
    report = json.loads((out / "quantize.json").read_text())
    assert report["mode"] == "int8-dynamic" and (out / "model.int8.onnx").is_file()
    torch_report = report["pytorch"]
    assert 0 < torch_report["max_relative_error"] < 0.05
    assert set(torch_report["latency"]) >= {"1_threads", "2_threads"}
    text = (out / marked.name / "quantized.py").read_text()
    assert "import nlc" not in text and "from nlc" not in text
    with imported_package(out, marked.name) as package:
        helper = importlib.import_module(f"{package.__name__}.quantized")
        model = helper.load_quantized(str(out / "weights.pt"))
    assert "DynamicQuantizedLinear" in str(model)
