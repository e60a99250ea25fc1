"""Calibration: the fit recovers known figures from synthetic times, the target file it
writes loads back, and a tiny real calibration run completes on each runtime."""

from __future__ import annotations

import math

import pytest
import yaml

import nlc
from nlc.analysis.cost import analyze, retimed
from nlc.calibrate import calibrate, write_target
from nlc.calibrate.fit import Sample, fit, knobs, log_error
from nlc.calibrate.micro import MICROS, Micro
from nlc.errors import NlcError
from nlc.targets import load_target

CPU = load_target("cpu")
# A machine unlike the shipped cpu target in every fitted figure.
TRUE = CPU.model_copy(
    update={
        "efficiency": {
            **CPU.efficiency,
            "matmul": 0.6,
            "conv": 0.4,
            "depthwise": 0.1,
            "attention": 0.3,
            "elementwise": 0.02,
            "norm": 0.08,
            "reduce": 0.05,
            "fft": 0.01,
        },  # fmt: skip
        "node_overhead_us": {"attention": 9.0},
        "memory_bandwidth_gbs": 12.0,
        "cache_bandwidth_gbs": 150.0,
        "memory_efficiency": 1.0,
        "launch_overhead_us": 1.5,
        "call_overhead_us": 6.0,
        "overlap": 0.6,
    }
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> list[Sample]:
    """Every micro-benchmark at its sizes, timed by the model itself on TRUE."""
    folder = tmp_path_factory.mktemp("micros")
    samples = []
    for micro in MICROS:
        path = folder / f"{micro.name}.yaml"
        path.write_text(yaml.safe_dump(micro.doc, sort_keys=False))
        _, graph = nlc.load(path)
        for dims in micro.sizes:
            cost = analyze(graph, TRUE, dims)
            samples.append(Sample(f"{micro.name} {dims}", cost, retimed(cost, TRUE)))
    return samples


def test_fit_recovers_the_figures_that_made_the_times(synthetic):
    start = TRUE.model_copy(
        update={
            "efficiency": {c: 0.3 for c in TRUE.efficiency},
            "node_overhead_us": {},
            "memory_bandwidth_gbs": 40.0,
            "cache_bandwidth_gbs": 60.0,
            "launch_overhead_us": 5.0,
            "call_overhead_us": 1.0,
            "overlap": 0.2,
        }
    )
    fitted = fit(start, synthetic)
    assert max(abs(log_error(fitted, s)) for s in synthetic) < 0.01
    chosen = {k.name: k for k in knobs(synthetic)}
    # The matmul class has no node of several launches besides gated_mlp's: its node
    # overhead trades off against the launch overhead, so only their sum is known there.
    assert set(chosen) >= {"efficiency.fft", "node_overhead_us.attention", "overlap"}
    for name, knob in chosen.items():
        if name != "node_overhead_us.matmul":
            assert knob.get(fitted) == pytest.approx(knob.get(TRUE), rel=0.03), name


def test_fit_leaves_what_the_samples_cannot_tell(synthetic):
    linear = [s for s in synthetic if s.name.startswith("linear_")]
    fitted = fit(CPU, linear)
    assert fitted.efficiency["conv"] == CPU.efficiency["conv"]  # no convolution timed
    assert fitted.efficiency["matmul"] != CPU.efficiency["matmul"]


def test_written_target_loads_and_validates(tmp_path):
    path = tmp_path / "mine.yaml"
    write_target(TRUE, path, ["fitted by a test", "", "second paragraph"])
    text = path.read_text()
    assert text.startswith("# fitted by a test\n#\n# second paragraph\nname: cpu\n")
    loaded = load_target(path)
    assert loaded.model_dump() == TRUE.model_dump()
    with pytest.raises(NlcError, match="node_overhead_us: unknown op class 'atention'"):
        path.write_text(text.replace("  attention: 9", "  atention: 9"))
        load_target(path)


TINY = (
    Micro(
        "linear",
        {
            "nlc": 1,
            "name": "m",
            "inputs": {"x": {"shape": ["B", 64]}},
            "graph": [{"op": "linear", "name": "fc", "out": 64}, "relu"],
        },  # fmt: skip
        ({"B": 1}, {"B": 256}),
    ),
    Micro(
        "gelu",
        {"nlc": 1, "name": "m", "inputs": {"x": {"shape": ["B", 256]}}, "graph": ["gelu"]},
        ({"B": 1}, {"B": 512}),
    ),
)


@pytest.mark.parametrize("runtime", ["onnxruntime", "pytorch"])
def test_a_tiny_calibration_run_writes_a_target(tmp_path, runtime):
    out = tmp_path / "my-cpu.yaml"
    fitted = calibrate("cpu", out, budget_s=0.3, threads=1, runtime=runtime, micros=TINY)
    loaded = load_target(out)
    assert loaded.name == "my-cpu" and loaded.calibrated and loaded.threads == 1
    assert loaded.runtime == runtime and loaded.peak_tflops == CPU.peak_tflops
    assert math.isclose(loaded.launch_overhead_us, fitted.launch_overhead_us, rel_tol=1e-3)
    text = out.read_text()
    assert "# CALIBRATED by `nlc calibrate`" in text and "4 timings of 2" in text
    assert "# The host CPU" in text  # the base file's sources stay on top
    assert text.count("CALIBRATED by") == 1


def test_calibrate_refuses_an_unknown_runtime(tmp_path):
    with pytest.raises(NlcError, match="unknown runtime 'onnx'"):
        calibrate("cpu", tmp_path / "x.yaml", runtime="onnx", micros=TINY)
