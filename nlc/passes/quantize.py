"""The `quantize` pass: run the model in fp16 or bf16, mark its linear layers for int8, or let
the cost model choose per target (`auto`).

The pass decides; the build acts. fp16/bf16 cast the weights and set the parameters' dtype,
and the generated `Model` casts itself (`nlc.emit.pytorch`); int8 leaves the fp32 weights as
they are and the build writes the int8 artifacts from them (`nlc.emit.quantize`: ONNX through
onnxruntime, PyTorch through torch.ao). The decision goes to `graph.meta["quantize"]`:
{"dtype": "f16" | "bf16" | "i8", "mode" (i8), "linears" (i8: the layers torch.ao quantizes),
"target", "predicted_ms" (per candidate), "reason"}. Tensor types stay f32 in the IR (an
embedding's output is f32 by its rule): the cost model runs the graph in the recorded dtype.
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nlc.analysis.cost import Cost, analyze, node_time
from nlc.errors import NlcError
from nlc.ir import Graph
from nlc.ir.types import FLOAT_DTYPES
from nlc.passes.base import PASSES, Options, PassResult, Weights, register

if TYPE_CHECKING:
    from nlc.targets import Target

# Option value -> the IR/target dtype.
IR_DTYPES = {"fp16": "f16", "bf16": "bf16", "int8": "i8"}
# The ONNX op types each int8 mode quantizes (nlc.emit.quantize.OP_TYPES), as IR ops.
INT8_OPS = {"dynamic": ("linear",), "static": ("linear", "conv2d")}
TIE = 0.02  # auto keeps the simpler candidate unless another is predicted this much faster
NF4_BYTES = 0.5 + 2 / 64  # a 4-bit weight-only format: 4 bits a weight, an fp16 scale per 64


class QuantizeOptions(Options):
    dtype: Literal["none", "fp16", "bf16", "int8", "auto"] = Field(
        default="auto",
        description="none (identity), fp16/bf16 (weights and compute), int8 (CPU artifacts), "
        "or auto: what the cost model predicts fastest on the spec's first target (else cpu)",
    )
    mode: Literal["dynamic", "static"] = Field(
        default="dynamic",
        description="int8: dynamic (activations quantized at run time; linears) or static "
        "(calibrated activation ranges, QDQ; linears and convolutions, ONNX only)",
    )
    select: str | list[str] = Field(
        default="*", description="int8: fnmatch glob(s) on the linear layers torch.ao quantizes"
    )


@register("quantize", QuantizeOptions)
def quantize(
    graph: Graph, weights: Weights | None, options: QuantizeOptions, target: Target | None = None
) -> PassResult:
    """Quantize the model: fp16, bf16, int8 (dynamic or static), or auto per target.

    fp16/bf16 need the dtype in the target's `dtypes`, int8 needs `i8`; `auto` picks among the
    candidates the target supports the one the cost model predicts fastest."""
    if options.dtype == "none":
        return PassResult(graph, weights, False, [{"dtype": "none", "decision": "unchanged"}])
    if options.dtype != "auto":
        if target is not None:
            _require(target, options.dtype)
        return _apply(graph, weights, options.dtype, options, target, {}, "requested")
    from nlc.targets import load_target

    target = target or load_target("cpu")
    predicted = predict(graph, target)
    choice = _choose(predicted)
    reason = _reason(target, choice, predicted)
    if choice == "none":
        row = {"dtype": "auto", "decision": "none", "target": target.name, "reason": reason}
        return PassResult(graph, weights, False, [{**row, "predicted_ms": _ms(predicted)}])
    if choice in ("nf4", "int4"):
        result = PASSES[choice].run(graph, weights, PASSES[choice].Options(), target)
        row = {"dtype": "auto", "decision": choice, "target": target.name, "reason": reason}
        result.report.insert(0, {**row, "predicted_ms": _ms(predicted)})
        return result
    dtype, _, mode = choice.partition("-")
    options = options.model_copy(update={"mode": mode or options.mode})
    return _apply(graph, weights, dtype, options, target, predicted, reason)


def _require(target: Target, dtype: str) -> None:
    if IR_DTYPES[dtype] in target.dtypes:
        return
    others = [d for d in ("fp16", "bf16") if d != dtype and IR_DTYPES[d] in target.dtypes]
    if "f16" in target.dtypes and target.peak_flops("f16", "matmul") <= target.peak_flops(
        "f32", "matmul"
    ):
        others = [
            f"{d} (storage only, no speed-up on this target)" if d == "fp16" else d for d in others
        ]
    raise NlcError(
        f"dtype: {target.name} has no {dtype}",
        None,
        f"use {' or '.join([*others, 'none'])}; {target.name} computes in "
        f"{', '.join(target.dtypes)}",
    )


def _apply(
    graph: Graph,
    weights: Weights | None,
    dtype: str,
    options: QuantizeOptions,
    target: Target | None,
    predicted: dict[str, float],
    reason: str,
) -> PassResult:
    ir = IR_DTYPES[dtype]
    decision: dict[str, Any] = {"dtype": ir}
    rows: list[dict[str, Any]] = []
    if ir == "i8":
        linears = _linears(graph, options.select)
        decision |= {"mode": options.mode, "linears": linears}
        rows = [{"node": name, "op": "linear", "dtype": "i8"} for name in linears]
    else:
        for node in graph:
            node.params = {
                k: replace(p, dtype=ir) if p.dtype in FLOAT_DTYPES else p
                for k, p in node.params.items()
            }
        if weights is not None:
            weights = {k: _cast(w, ir) for k, w in weights.items()}
    if target is not None:
        decision["target"] = target.name
    if predicted:
        decision["predicted_ms"] = _ms(predicted)
    decision["reason"] = reason
    graph.meta["quantize"] = decision
    keys = ("mode", "target", "predicted_ms", "reason")
    head = {"dtype": "auto" if predicted else dtype, "decision": ir}
    head |= {k: decision[k] for k in keys if k in decision}
    return PassResult(graph, weights, True, [head, *rows])


def _linears(graph: Graph, select: str | list[str]) -> list[str]:
    globs = [select] if isinstance(select, str) else select
    found = [
        n.name for n in graph if n.op == "linear" and any(fnmatchcase(n.name, g) for g in globs)
    ]
    if not found:
        raise NlcError(
            f"select: {', '.join(map(repr, globs))} matches no linear layer",
            None,
            "int8 (torch.ao dynamic) quantizes linear layers; check the names with nlc check",
        )
    return found


def _cast(w, ir: str):
    import torch

    return (
        w.to(getattr(torch, {"f16": "float16", "bf16": "bfloat16"}[ir]))
        if w.is_floating_point()
        else w
    )


# -- auto: the candidates' predicted latency ----------------------------------------------------

# Simplest first: auto prefers an earlier candidate unless a later one is TIE faster.
CANDIDATES = ("none", "fp16", "bf16", "int8-dynamic", "int8-static", "nf4", "int4")


def _choose(predicted: dict[str, float]) -> str:
    """The fastest candidate, keeping a simpler one unless a later one is TIE faster."""
    best = "none"
    for c in CANDIDATES:
        if c in predicted and predicted[c] < predicted[best] * (1 - TIE):
            best = c
    return best


def predict(graph: Graph, target: Target) -> dict[str, float]:
    """Predicted seconds of one forward pass per candidate the target supports, at the spec's
    dims (`graph.meta["dims"]`, 1 where not given). int8 only on a CPU target: torch.ao and
    onnxruntime's int8 kernels run there; the 4-bit formats when their passes are registered."""
    symbols = graph.meta.get("symbols", [])
    dims = {k: v for k, v in graph.meta.get("dims", {}).items() if k in symbols}
    base = analyze(graph, target, dims, "f32")
    out = {"none": base.latency}
    for name in ("fp16", "bf16"):
        if IR_DTYPES[name] in target.dtypes:
            out[name] = analyze(graph, target, dims, IR_DTYPES[name]).latency
    if "i8" in target.dtypes and target.kind == "cpu":
        for mode, ops in INT8_OPS.items():
            out[f"int8-{mode}"] = _int8_latency(base, target, ops, dynamic=mode == "dynamic")
    half = "f16" if "f16" in target.dtypes else None
    for name in ("nf4", "int4"):
        if name in PASSES:
            cost = analyze(graph, target, dims, half) if half else base
            out[name] = _weight_only_latency(cost, target)
    return out


def _int8_latency(cost: Cost, target: Target, ops: tuple[str, ...], dynamic: bool) -> float:
    """`cost.latency` with the `ops` nodes computing at the i8 rate on int8 weights, plus, per
    node, the pass that quantizes its input (dynamic: read f32, write u8; static: the QDQ pair)."""
    total = cost.latency
    for n in cost.nodes:
        if n.op not in ops:
            continue
        dram = n.dram_bytes - n.weight_bytes + n.weight_bytes // 4
        new = node_time(target, "i8", n.op_class, n.work, max(dram, 0), n.cached_bytes, n.launches)
        act = n.read_bytes + n.read_bytes // 4
        quant = node_time(target, "f32", "elementwise", {}, act * (1 + (not dynamic)), 0, 1)
        total += new.total + quant.total - n.time.total
    return total


def _weight_only_latency(cost: Cost, target: Target) -> float:
    """`cost.latency` with linear weights read at NF4_BYTES a weight (dequantized on the fly)."""
    total = cost.latency
    for n in cost.nodes:
        if n.op != "linear" or not n.params:
            continue
        weight = int(n.params * NF4_BYTES)
        dram = max(n.dram_bytes - n.weight_bytes + weight, 0)
        new = node_time(target, n.dtype, n.op_class, n.work, dram, n.cached_bytes, n.launches)
        total += new.total - n.time.total
    return total


def _ms(predicted: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v * 1e3:.4g}") for k, v in predicted.items()}


def _reason(target: Target, choice: str, predicted: dict[str, float]) -> str:
    f32 = predicted["none"]
    parts = [f"{c} {predicted[c] * 1e3:.3g} ms" for c in predicted]
    notes = []
    if "f16" in target.dtypes and target.peak_flops("f16", "matmul") <= target.peak_flops(
        "f32", "matmul"
    ):
        notes.append("f16 computes at the f32 rate: only bandwidth falls")
    if "i8" in target.dtypes and target.kind != "cpu":
        notes.append("int8 left out: its artifacts (torch.ao, onnxruntime) run on the CPU")
    speed = f32 / predicted[choice]
    return (
        f"{choice} predicted fastest on {target.name} ({speed:.2f}x f32): "
        + ", ".join(parts)
        + ("; " + "; ".join(notes) if notes else "")
    )
