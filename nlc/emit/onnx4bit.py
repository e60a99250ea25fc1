"""Give a build's model.onnx onnxruntime's 4-bit kernels for its 4-bit layers (passes nf4,
int4): each 4-bit matmul (a `quant_linear`, a linear head tied to a 4-bit table, the q/k/v and
output projections of a `quant_attention`) runs as one com.microsoft MatMulNBits (int4, zero
point 8) or MatMulBnb4 (nf4, quant_type 1) on its packed weight and scales, in place of the
fp32 MatMul that the exporter writes; an int4 `quant_embedding` runs as one GatherBlockQuantized
(4 bits in uint8, default zero point 8: our codes as stored). GatherBlockQuantized has no NF4,
so an nf4 table keeps the exporter's subgraph, which gathers the packed rows and their scales
and dequantizes only those.

The exporter folds a small layer's on-the-fly dequantization into a dense fp32 weight and
keeps it as ops on a large one; either way the layer's MatMul (or Gemm) is found by the module
path the exporter records on every node (`pkg.torch.onnx.name_scopes`), its weight input is
dropped with whatever computed it, and the 4-bit tensors come from the weights the export used
(`seeded_model`). Both runtimes then compute with the same dequantized weights: the file is
verified against PyTorch at model.onnx's tolerance (nlc.emit.onnx.TOLERANCE). A tied head gets
its own copy of the table's codes (the kernels want other layouts than the lookup). QLoRA
layers (`qlora_linear`) keep the exporter's dense form: merge them (`lora_merge`, then nf4) to
serve.
"""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlc.errors import NlcError
from nlc.ir import Graph, Node

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

FOUR_BIT_OPS = ("quant_linear", "quant_attention", "quant_embedding")
SCOPES = "pkg.torch.onnx.name_scopes"
MS_DOMAIN = "com.microsoft"
MEASURE_BUDGET_S = 1.0  # timing the 4-bit file against its dense fp32 twin, interleaved


def rewrite_4bit(
    package_dir: Path,
    graph: Graph,
    verify: bool = True,
    measure: bool = True,
    dims: dict[str, int] | None = None,
) -> dict[str, Any] | None:
    """Rewrite `package_dir/model.onnx` in place for the graph's 4-bit layers and, with
    `verify`, check it against the package's PyTorch model; None when the graph has none.
    Returns the report: the layers and their kernel, the bytes of the exported file (4-bit
    layers as fp32 MatMuls, or as dequantizing ops on big layers) and of the rewritten one, the
    checks, and with `measure` the onnxruntime CPU latency of the
    dense fp32 twin (the same model with dequantized fp32 weights) and of the 4-bit file, at
    batch 1 and `dims` (the spec's `dims`) for the other symbolic dims."""
    import onnx
    import torch

    from nlc.emit.onnx import (
        ONNX_FILE,
        TOLERANCE,
        _verify,
        example_sizes,
        imported_package,
        seeded_model,
    )

    layers = [n for n in graph if n.op in FOUR_BIT_OPS]
    if not layers:
        return None
    path = package_dir / ONNX_FILE
    before = path.stat().st_size
    with imported_package(package_dir, graph.name) as package, torch.random.fork_rng(devices=[]):
        model = seeded_model(package, package_dir)
        state = model.state_dict()
        quantized, dense = onnx.load(str(path)), onnx.load(str(path))
        kernels = {}
        for node in layers:
            for module in _matmul_paths(node):
                _rewrite(quantized, dense, module, node.attrs, state)
                kernels[module] = _kernel(node.attrs.format)
            if node.op == "quant_embedding":
                kernels[node.name] = _rewrite_lookup(quantized, dense, node, state)
        for m in (quantized, dense):
            _drop_unused(m.graph)
        quantized.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
        onnx.checker.check_model(quantized)
        onnx.save(quantized, str(path))
        sizes = example_sizes(graph)
        checks = _verify(model, graph, path, sizes) if verify else None
    report: dict[str, Any] = {
        "layers": kernels,
        "bytes_exported": before,
        "bytes": path.stat().st_size,
        "verified": verify,
    }
    if checks is not None:
        report |= {"tolerance": TOLERANCE, "checks": checks}
    if measure:
        report["measured"] = _measure(path, dense, graph, dims or {})
    return report


def _kernel(fmt: str) -> str:
    return "MatMulBnb4" if fmt == "nf4" else "MatMulNBits"


def _matmul_paths(node: Node) -> list[str]:
    """The module paths of the node's 4-bit matmuls."""
    if node.op == "quant_attention":
        return [f"{node.name}.qkv", f"{node.name}.out"]
    return [node.name] if node.op == "quant_linear" else []


def _rewrite(
    quantized: onnx.ModelProto,
    dense: onnx.ModelProto,
    path: str,
    a: Any,
    state: dict[str, torch.Tensor],
) -> None:
    """Put the 4-bit kernel in place of the matmul of the module at `path` in `quantized`, and
    the dequantized fp32 weight in `dense`."""
    import onnx
    from onnx import numpy_helper

    from nlc.ops.quantized import dequantize

    qweight, scales = state[f"{path}.qweight"], state[f"{path}.scales"]
    out, features = qweight.shape[0], qweight.shape[1] * 2
    weight = dequantize(qweight, scales, a.format).float().numpy()  # [out, in]
    for m in (quantized, dense):
        index, matmul = _matmul(m.graph, path)
        if m is dense:
            trans_b = _attr(matmul, "transB", 0)
            value = weight if trans_b else weight.T.copy()
            m.graph.initializer.append(numpy_helper.from_array(value, f"{path}.weight"))
            matmul.input[1] = f"{path}.weight"
            continue
        tensors, attrs = _four_bit(qweight.numpy(), scales.float().numpy(), a.format, a.group_size)
        names = [f"{path}.{k}" for k in tensors]
        m.graph.initializer.extend(
            numpy_helper.from_array(t, name)
            for name, t in zip(names, tensors.values(), strict=True)
        )
        bias = matmul.input[2] if matmul.op_type == "Gemm" and len(matmul.input) > 2 else None
        result = f"{matmul.output[0]}_4bit" if bias else matmul.output[0]
        new = [
            onnx.helper.make_node(
                _kernel(a.format),
                [matmul.input[0], *names],
                [result],
                name=f"{matmul.name}_4bit",
                domain=MS_DOMAIN,
                K=features,
                N=out,
                block_size=a.group_size,
                **attrs,
            )
        ]
        if bias:
            new.append(onnx.helper.make_node("Add", [result, bias], [matmul.output[0]]))
        for n in new:
            n.metadata_props.extend(matmul.metadata_props)
        del m.graph.node[index]
        for offset, n in enumerate(new):
            m.graph.node.insert(index + offset, n)


def _four_bit(
    qweight: np.ndarray, scales: np.ndarray, fmt: str, group_size: int
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The kernel's weight inputs by name suffix, and its extra attributes. MatMulNBits reads
    [N, blocks, bytes per block], low nibble first as stored; MatMulBnb4 a flat array, high
    nibble first."""
    out = qweight.shape[0]
    if fmt == "nf4":
        swapped = (qweight << 4) | (qweight >> 4)
        return {"qweight_bnb4": swapped.reshape(-1), "absmax": scales.reshape(-1)}, {
            "quant_type": 1
        }
    packed = qweight.reshape(out, -1, group_size // 2)
    return {"qweight_nbits": packed, "scales": scales}, {"bits": 4}


def _rewrite_lookup(
    quantized: onnx.ModelProto,
    dense: onnx.ModelProto,
    node: Node,
    state: dict[str, torch.Tensor],
) -> str:
    """Put GatherBlockQuantized (int4) in place of the table's dequantizing lookup in
    `quantized`, and a Gather on the dequantized fp32 table in `dense`; the kernel used."""
    import onnx
    from onnx import numpy_helper

    from nlc.ops.quantized import dequantize

    a = node.attrs
    qweight, scales = state[f"{node.name}.qweight"], state[f"{node.name}.scales"]
    kernel = "GatherBlockQuantized" if a.format == "int4" else "dequantizing Gather (no NF4 kernel)"
    for m in (quantized, dense):
        if m is quantized and a.format == "nf4":
            continue
        index, last, ids = _lookup(m.graph, node.name)
        if m is dense:
            table = dequantize(qweight, scales, a.format).float().numpy()
            inputs, attrs = [f"{node.name}.weight", ids], {}
            tensors = {inputs[0]: table}
        else:
            inputs = [f"{node.name}.qweight_gbq", ids, f"{node.name}.scales_gbq"]
            tensors = {inputs[0]: qweight.numpy(), inputs[2]: scales.float().numpy()}
            attrs = {"domain": MS_DOMAIN, "gather_axis": 0, "quantize_axis": 1, "bits": 4}
            attrs["block_size"] = a.group_size
        op = "Gather" if m is dense else "GatherBlockQuantized"
        new = onnx.helper.make_node(
            op, inputs, list(last.output), name=f"{node.name}_lookup", **attrs
        )
        new.metadata_props.extend(last.metadata_props)
        m.graph.initializer.extend(numpy_helper.from_array(t, k) for k, t in tensors.items())
        del m.graph.node[index]
        m.graph.node.insert(index, new)
    return kernel


def _lookup(graph: onnx.GraphProto, path: str) -> tuple[int, onnx.NodeProto, str]:
    """The last node the exporter wrote inside the table's module (its output is the looked-up
    rows), and the ids: the first tensor the module reads from outside, not a weight (the
    lookup starts by indexing with them)."""
    inside = [(i, n) for i, n in enumerate(graph.node) if _scope(n) == path]
    if not inside:
        raise NlcError(
            f"model.onnx has no nodes for the 4-bit table {path}",
            None,
            "build with --no-onnx, or report the model to the nlc developers",
        )
    made = {o for _, n in inside for o in n.output} | {t.name for t in graph.initializer}
    ids = next(x for _, n in inside for x in n.input if x and x not in made)
    return (*inside[-1], ids)


def _matmul(graph: onnx.GraphProto, path: str) -> tuple[int, onnx.NodeProto]:
    """The one MatMul or Gemm the exporter wrote inside the module at `path`."""
    found = [
        (i, n)
        for i, n in enumerate(graph.node)
        if n.op_type in ("MatMul", "Gemm") and _scope(n) == path
    ]
    if len(found) != 1:
        raise NlcError(
            f"model.onnx has {len(found)} matmuls for the 4-bit layer {path}, not one",
            None,
            "build with --no-onnx, or report the model to the nlc developers",
        )
    return found[0]


def _scope(n: onnx.NodeProto) -> str | None:
    """The qualified name of the module a node was exported from. The exporter records the
    qualified names from the root ('') down, then the function called: ['', 'h.0', 'h.0.fc',
    'linear_2']."""
    for prop in n.metadata_props:
        if prop.key == SCOPES:
            path = ast.literal_eval(prop.value)
            return path[-2] if len(path) >= 2 else None
    return None


def _attr(n: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in n.attribute if a.name == name), default)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes no output depends on (the dequantization a weight swap orphaned), then
    the initializers and value infos nothing reads."""
    needed = {o.name for o in graph.output}
    kept = []
    for n in reversed(graph.node):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed |= set(n.input)
    graph.ClearField("node")
    graph.node.extend(reversed(kept))
    for field in (graph.initializer, graph.value_info):
        unused = [t for t in field if t.name not in needed]
        for t in unused:
            field.remove(t)


def _measure(
    path: Path, dense: onnx.ModelProto, graph: Graph, dims: dict[str, int]
) -> dict[str, Any]:
    """Median onnxruntime CPU latency of the dense fp32 twin and of the 4-bit file, and the
    twin's size."""
    import onnx

    from nlc.analysis.compare import run_dims
    from nlc.calibrate.timing import REPORT_THREADS, onnx_runner, report_latency

    dims = run_dims(graph, dims)
    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / "dense.onnx"
        onnx.save(dense, str(twin))
        runs = {
            "fp32": onnx_runner(twin, graph, dims, REPORT_THREADS),
            "4bit": onnx_runner(path, graph, dims, REPORT_THREADS),
        }
        return {"bytes_fp32": twin.stat().st_size, **report_latency(runs, MEASURE_BUDGET_S)}
