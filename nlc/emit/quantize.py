"""Quantize a build's model.onnx to int8 with onnxruntime, and measure what it costs and gains:
file size, onnxruntime CPU latency and the error against the fp32 file on the same inputs.

Only MatMul and Gemm, and in static mode Conv, are quantized (weights int8, per tensor): they
hold nearly all the weights and time, and leaving Gather out keeps embedding tables fp32, so
token ids still index exact rows. Dynamic mode leaves convolutions fp32: onnxruntime's
dynamically quantized Conv (ConvInteger) ran cnn_digits 5x slower than fp32 on this CPU, while
static QDQ convolutions ran it 1.5x faster. `quant_pre_process` is not run: the exporter
already folds batchnorm and infers shapes, and its symbolic shape inference fails on the
exporter's attention graphs.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlc.errors import NlcError
from nlc.ir import Graph

if TYPE_CHECKING:
    import numpy as np

# numpy, torch (nlc.emit.onnx) and onnxruntime are imported where used: the CLI imports MODES.

MODES = ("int8-dynamic", "int8-static")
QUANT_FILE = "model.int8.onnx"
REPORT_FILE = "quantize.json"
OP_TYPES = {"int8-dynamic": ["MatMul", "Gemm"], "int8-static": ["MatMul", "Gemm", "Conv"]}
CALIBRATION_BATCHES = 8  # per build size; random inputs only need to span the activation ranges
MEASURE_BUDGET_S = 1.0  # timing both files, in interleaved rounds

Feeds = Mapping[str, Any]  # input name -> array (numpy or torch)


def quantize_onnx(
    package_dir: Path,
    graph: Graph,
    mode: str,
    calibration: Iterable[Feeds] | None = None,
) -> dict[str, Any]:
    """Write `package_dir/model.int8.onnx` from the build's model.onnx and `quantize.json`, the
    report that it returns: mode, sizes, errors relative to the fp32 outputs' scale, latencies.

    `mode` is "int8-dynamic" (weights int8, activations quantized to uint8 at run time, as
    onnxruntime recommends for the CPU) or "int8-static" (QDQ format, int8 weights and
    activations with ranges calibrated beforehand). Static calibration runs on `calibration`,
    input dicts by input name; without it, on random inputs at the build's verification sizes,
    which fixes the ranges only roughly: real data gives better ones. Raises NlcError when the
    quantized file does not load or run, or gives NaN or infinite outputs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    from nlc.emit.onnx import ONNX_FILE, example_sizes

    if mode not in MODES:
        raise NlcError(f"unknown quantization mode {mode!r}", None, f"choose {' or '.join(MODES)}")
    source, target = package_dir / ONNX_FILE, package_dir / QUANT_FILE
    sizes = example_sizes(graph)
    report: dict[str, Any] = {"file": QUANT_FILE, "mode": mode, "op_types": OP_TYPES[mode]}
    # The quantizer logs advice to run quant_pre_process on the root logger (see the top).
    logging.disable(logging.WARNING)
    try:
        if mode == "int8-dynamic":
            with tempfile.TemporaryDirectory() as tmp:
                plain = Path(tmp) / ONNX_FILE
                _gemm_to_matmul(source, plain)
                quantize_dynamic(
                    plain,
                    target,
                    op_types_to_quantize=OP_TYPES[mode],
                    weight_type=QuantType.QInt8,
                )
        else:
            if calibration is None:
                calibration = _random_feeds(graph, sizes)
                batches = CALIBRATION_BATCHES * len(sizes)
                report["calibration"] = {"data": "random", "batches": batches}
            else:
                calibration = list(calibration)
                report["calibration"] = {"data": "given", "batches": len(calibration)}
            ops = OP_TYPES[mode]
            quantize_static(source, target, _Reader(calibration), op_types_to_quantize=ops)
    except Exception as e:  # onnxruntime's quantizer raises bare Exceptions and asserts
        raise NlcError(f"cannot quantize {source.name} ({mode}): {e}") from e
    finally:
        logging.disable(logging.NOTSET)
    report["bytes"] = {"fp32": source.stat().st_size, "int8": target.stat().st_size}
    report["size_ratio"] = round(report["bytes"]["fp32"] / report["bytes"]["int8"], 2)
    report.update(_check(source, target, graph, sizes))
    (package_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _gemm_to_matmul(source: Path, target: Path) -> None:
    """Rewrite each Gemm with a constant weight as MatMul (+ Add of the bias): onnxruntime's
    dynamic quantization handles MatMul but not Gemm, which the exporter emits for 2-D linears."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(source)
    weights = {t.name: t for t in model.graph.initializer}
    nodes, transposed = [], set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        constant = node.op_type == "Gemm" and node.input[1] in weights
        if not constant or not plain or attrs.get("transA"):
            nodes.append(node)
            continue
        if attrs.get("transB"):  # MatMul has no transpose flag: store the weight transposed
            w = weights[node.input[1]]
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name))
            transposed.add(w.name)
        (out,) = node.output
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{out}_matmul" if bias else out
        nodes.append(helper.make_node("MatMul", node.input[:2], [product], name=node.name))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [v for v in model.graph.value_info if v.name not in transposed]  # stale shapes
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    onnx.save(model, target)


def _random_feeds(graph: Graph, sizes) -> Iterator[Feeds]:
    """CALIBRATION_BATCHES random inputs at each verification size, seeds apart from the
    ones the error check uses."""
    from nlc.emit.onnx import SEED, example_inputs

    for k, size in enumerate(sizes):
        for i in range(CALIBRATION_BATCHES):
            inputs = example_inputs(graph, size, SEED + 100 + k * CALIBRATION_BATCHES + i)
            yield {n.name: t for n, t in zip(graph.inputs, inputs, strict=True)}


def pipeline_feeds(package_dir: Path, graph: Graph, data_root: Path) -> list[Feeds]:
    """CALIBRATION_BATCHES batches of the training split of the package's own data module
    (its train section's data), the inputs int8-static calibrates its ranges on."""
    from nlc.emit.batches import train_batches
    from nlc.emit.onnx import imported_package

    with imported_package(package_dir, graph.name) as package:
        batches, _, _ = train_batches(package, data_root, CALIBRATION_BATCHES)
    return [{graph.inputs[0].name: x} for x, _ in batches]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol (duck-typed): numpy feeds, then None."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        import numpy as np

        feed = next(self._feeds, None)
        return None if feed is None else {k: np.asarray(v) for k, v in feed.items()}


def _check(source: Path, target: Path, graph: Graph, sizes) -> dict[str, Any]:
    """Run both files on the same inputs at each verification size: per output the max abs
    error of int8 against fp32, relative to the fp32 output's scale; then time both at the
    first size (onnxruntime CPU, one thread, median after warm-up, best of rounds)."""
    import numpy as np

    from nlc.calibrate.timing import REPORT_THREADS, onnx_runner, report_latency
    from nlc.emit.onnx import output_error

    checks, worst, runs = [], 0.0, {}
    for size in sizes:
        dims = {str(s): n for s, n in size.items()}
        fp32 = onnx_runner(source, graph, dims, REPORT_THREADS)
        try:
            int8 = onnx_runner(target, graph, dims, REPORT_THREADS)
            got = int8()
        except Exception as e:  # onnxruntime's errors have no common base class below Exception
            raise NlcError(
                f"onnxruntime cannot run {QUANT_FILE}: {e}",
                None,
                "build without --quantize, or try the other quantization mode",
            ) from e
        outputs = {}
        for name, want, have in zip(graph.outputs, fp32(), got, strict=True):
            if not np.isfinite(have).all():
                raise NlcError(
                    f"{QUANT_FILE} gives NaN or infinite values in output {name!r}",
                    None,
                    "try the other quantization mode, or calibrate on real data",
                )
            error, scale = output_error(want, have)
            outputs[name] = {
                "max_abs_error": float(f"{error:.3g}"),
                "scale": float(f"{scale:.3g}"),
                "relative_error": float(f"{error / scale:.3g}"),
            }
            worst = max(worst, error / scale)
        checks.append({"sizes": dims, "outputs": outputs})
        runs = runs or {"fp32": fp32, "int8": int8}
    latency = {**report_latency(runs, MEASURE_BUDGET_S), "sizes": checks[0]["sizes"]}
    return {
        "checks": checks,
        "max_relative_error": float(f"{worst:.3g}"),
        "latency": latency,
        "speedup": round(latency["fp32_ms"] / latency["int8_ms"], 2),
    }


# -- the quantize pass's artifacts: fp16 ONNX, the PyTorch int8 helper -------------------------

PYTORCH_FILE = "quantized.py"  # in the package: `load_quantized()`, torch.ao dynamic int8
HALF_ULPS = 16  # a half-precision output may differ by this many eps of its dtype x its scale
TORCH_THREADS = (1, 2)


def export_half_onnx(
    package_dir: Path, graph: Graph, spec: Any, opset: int | None, verify: bool
) -> dict[str, Any]:
    """model.onnx for a package the `quantize` pass put in fp16 or bf16: the fp32 twin of the
    model exported and verified as usual, then (fp16) converted by onnxruntime's float16
    converter, with fp32 inputs and outputs cast at the file's edges so that every runtime and
    report feeds it as before, and verified against the fp16 PyTorch model within HALF_ULPS
    eps of fp16. bf16 stays fp32: onnxruntime's CPU provider has no bf16 MatMul or Conv.
    Returns the report for onnx.json."""
    import copy

    import onnx
    import torch

    from nlc.emit.onnx import ONNX_FILE, export_onnx
    from nlc.emit.package import package_files
    from nlc.weights import WEIGHTS_FILE

    dtype = graph.meta["quantize"]["dtype"]
    twin = copy.copy(graph)
    twin.meta = {k: v for k, v in graph.meta.items() if k != "quantize"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for rel, text in package_files(twin, spec).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text, encoding="utf-8")
        if (package_dir / WEIGHTS_FILE).is_file():
            state = torch.load(package_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            torch.save(state, folder / WEIGHTS_FILE)
        report = export_onnx(folder, twin, opset, verify)
        fp32 = onnx.load(folder / ONNX_FILE)
    report["dtype"] = "f32"
    if dtype == "bf16":
        report["note"] = (
            "the package runs in bf16; model.onnx is its fp32 twin: onnxruntime's CPU "
            "provider has no bf16 MatMul or Conv kernels"
        )
        onnx.save(fp32, package_dir / ONNX_FILE)
        return report
    from onnxruntime.transformers.float16 import convert_float_to_float16

    report["bytes_fp32"] = report["bytes"]
    half = convert_float_to_float16(fp32, keep_io_types=True, disable_shape_infer=True)
    onnx.save(half, package_dir / ONNX_FILE)
    report |= {"dtype": "f16", "bytes": (package_dir / ONNX_FILE).stat().st_size}
    if verify:
        report |= _verify_half(package_dir, graph)
    return report


def _verify_half(package_dir: Path, graph: Graph) -> dict[str, Any]:
    """Run the fp16 file and the fp16 PyTorch package on the same inputs at each verification
    size; fail the build when an output differs by more than HALF_ULPS eps x its scale."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from nlc.emit.onnx import (
        ONNX_FILE,
        SEED,
        example_inputs,
        example_sizes,
        imported_package,
        output_error,
        seeded_model,
    )

    tolerance = HALF_ULPS * float(np.finfo(np.float16).eps)
    session = ort.InferenceSession(str(package_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    checks, failures = [], []
    with imported_package(package_dir, graph.name) as package:
        model = seeded_model(package, package_dir)
        for k, size in enumerate(example_sizes(graph)):
            args = [_half(t) for t in example_inputs(graph, size, SEED + 1 + k)]
            with torch.no_grad():
                want = model(*args)
            want = _outputs(want)
            # The file keeps fp32 inputs and outputs (casts at its edges): the same values.
            feeds = {n.name: _float(t).numpy() for n, t in zip(graph.inputs, args, strict=True)}
            try:
                have = session.run(None, feeds)
            except Exception as e:  # onnxruntime's errors have no common base class
                raise NlcError(
                    f"onnxruntime cannot run the fp16 {ONNX_FILE}: {e}",
                    None,
                    "quantize to bf16 (fp32 ONNX) or none, or build with --no-onnx",
                ) from e
            outputs = {}
            for name, w, h in zip(graph.outputs, want, have, strict=True):
                error, scale = output_error(w.float().numpy(), h)
                outputs[name] = {
                    "max_abs_error": float(f"{error:.3g}"),
                    "scale": float(f"{scale:.3g}"),
                }
                if not error <= tolerance * scale:
                    failures.append(f"{name}: {error:.3g} > {tolerance:.3g} x {scale:.3g}")
            checks.append({"sizes": {str(s): n for s, n in size.items()}, "outputs": outputs})
    if failures:
        raise NlcError(
            "the fp16 model.onnx does not match the fp16 PyTorch model: " + "; ".join(failures),
            None,
            "quantize to bf16 or none, or build with --skip-verify",
        )
    return {"tolerance": float(f"{tolerance:.3g}"), "checks": checks}


def _half(t):
    return t.half() if t.is_floating_point() else t


def _float(t):
    return t.float() if t.is_floating_point() else t


def quantize_pytorch(package_dir: Path, graph: Graph, linears: list[str]) -> dict[str, Any]:
    """Write the package's `quantized.py` (torch.ao dynamic int8 of `linears`) and measure it
    against the fp32 model: the max error relative to each output's scale at the verification
    sizes, and eager CPU latency at the first size on TORCH_THREADS threads."""
    import importlib

    import torch

    from nlc import __version__
    from nlc.calibrate.timing import best_of_rounds
    from nlc.emit.onnx import (
        SEED,
        example_inputs,
        example_sizes,
        imported_package,
        output_error,
        seeded_model,
    )
    from nlc.emit.render import format_python, render
    from nlc.weights import WEIGHTS_FILE

    text = render("package/quantized.py.j2", name=graph.name, version=__version__, linears=linears)
    (package_dir / graph.name / PYTORCH_FILE).write_text(format_python(text, PYTORCH_FILE))
    weights = package_dir / WEIGHTS_FILE
    sizes = example_sizes(graph)
    threads = torch.get_num_threads()
    with imported_package(package_dir, graph.name) as package, torch.random.fork_rng(devices=[]):
        fp32 = seeded_model(package, package_dir)
        torch.manual_seed(SEED)  # the seeded weights of fp32, when the build has none
        helper = importlib.import_module(f"{package.__name__}.quantized")
        int8 = helper.load_quantized(str(weights) if weights.is_file() else None)
        worst, inputs = 0.0, [example_inputs(graph, s, SEED + 1 + k) for k, s in enumerate(sizes)]
        with torch.inference_mode():
            for args in inputs:
                want, have = fp32(*args), int8(*args)
                for w, h in zip(_outputs(want), _outputs(have), strict=True):
                    error, scale = output_error(w.numpy(), h.numpy())
                    worst = max(worst, error / scale)
        latency: dict[str, Any] = {}
        try:
            for n in TORCH_THREADS:
                torch.set_num_threads(n)
                runs = {name: _call(m, inputs[0]) for name, m in (("fp32", fp32), ("int8", int8))}
                ms = {k: min(v) * 1e3 for k, v in best_of_rounds(runs, MEASURE_BUDGET_S).items()}
                latency[f"{n}_threads"] = {
                    "fp32_ms": float(f"{ms['fp32']:.4g}"),
                    "int8_ms": float(f"{ms['int8']:.4g}"),
                    "speedup": round(ms["fp32"] / ms["int8"], 2),
                }
        finally:
            torch.set_num_threads(threads)
    return {
        "file": f"{graph.name}/{PYTORCH_FILE}",
        "method": "torch.ao.quantization.quantize_dynamic (qint8, per tensor)",
        "linears": len(linears),
        "max_relative_error": float(f"{worst:.3g}"),
        "latency": {
            "runtime": "PyTorch eager CPU",
            "sizes": {str(s): n for s, n in sizes[0].items()},
            **latency,
        },
    }


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def _call(model, args):
    import torch

    def run():
        with torch.inference_mode():
            model(*args)

    return run
