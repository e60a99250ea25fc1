"""Export a generated package to ONNX and verify the file against PyTorch with onnxruntime."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy
import torch

from nlc.errors import NlcError
from nlc.ir import Graph
from nlc.ir.graph import Value
from nlc.ir.types import DTYPES, FLOAT_DTYPES
from nlc.weights import WEIGHTS_FILE

# torch's dynamo exporter translates to opset 18 and converts up; every zoo model exports and
# verifies at 18..25 (torch 2.13, onnxruntime 1.31). 20 has Gelu and is widely supported by
# runtimes; 23 adds fused Attention and RMSNormalization, which older runtimes lack.
DEFAULT_OPSET = 20
MIN_OPSET = 18
MAX_OPSET = 25
ONNX_FILE = "model.onnx"
TOLERANCE = 1e-4  # max abs error allowed, relative to the output's scale max |PyTorch output|
SEED = 0
# Sizes of the symbolic dims at which the file is verified: batch-like dims (the first dim
# of an input) and the others (sequence, ...), each clamped to what the graph allows.
BATCH_SIZES = (2, 3)
OTHER_SIZES = (8, 13)
# Exporter annotations kept on nodes: module paths. The rest hold temp-dir paths and the
# throwaway module name, and would make the file differ from build to build.
KEPT_NODE_METADATA = frozenset({"pkg.torch.onnx.name_scopes"})


def export_onnx(
    package_dir: Path, graph: Graph, opset: int | None = None, verify: bool = True
) -> dict[str, Any]:
    """Write `package_dir/model.onnx` for the package written there, and verify it.

    The weights are the build's weights.pt if it has one, else from a fixed seed, so the same
    spec gives the same file. Returns the
    report: opset, size in bytes, the dynamic dims and, when verified, the checks: for each
    size tried, the max abs error and the scale of each output. Raises NlcError when export
    or a check fails. `opset` None means DEFAULT_OPSET.
    """
    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise NlcError(
            f"ONNX opset {opset} is not supported",
            None,
            f"choose an opset from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})",
        )
    path = package_dir / ONNX_FILE
    limits = symbol_limits(graph)
    sizes = example_sizes(graph, limits)
    with imported_package(package_dir, graph.name) as package, torch.random.fork_rng(devices=[]):
        model = seeded_model(package, package_dir)
        program = _export(model, graph, example_inputs(graph, sizes[0], SEED), limits, opset)
        _save(program, path, json.loads((package_dir / "build.json").read_text()))
        _check(path)
        checks = _verify(model, graph, path, sizes) if verify else None
    report: dict[str, Any] = {
        "file": ONNX_FILE,
        "opset": opset,
        "bytes": sum(f.stat().st_size for f in package_dir.glob(f"{ONNX_FILE}*")),
        "dynamic_dims": {str(s): {"max": limits.get(s)} for s in _symbols(graph)},
        "verified": verify,
    }
    if checks is not None:
        report["tolerance"] = TOLERANCE
        report["checks"] = checks
    return report


def symbol_limits(graph: Graph) -> dict[sympy.Symbol, int]:
    """The largest size of each symbolic dim that the learned position tables cover."""
    limits: dict[sympy.Symbol, int] = {}
    for node in graph:
        if node.op != "pos_embedding":
            continue
        positions = graph.input_types(node)[0].shape[1]
        free = getattr(positions, "free_symbols", set())
        if len(free) != 1:
            continue  # concrete (shape inference checked it) or several dims (export will say)
        (s,) = free
        limits[s] = min(limits.get(s, sys.maxsize), _largest(positions, s, node.attrs.num))
    return limits


def example_sizes(
    graph: Graph, limits: dict[sympy.Symbol, int] | None = None
) -> list[dict[sympy.Symbol, int]]:
    """Two different sizes for the symbolic dims, within `limits` (default: the graph's
    `symbol_limits`): batch-like dims (first dim of an input) take BATCH_SIZES, the others
    (sequence, ...) OTHER_SIZES."""
    limits = symbol_limits(graph) if limits is None else limits
    batch = {n.type.shape[0] for n in graph.inputs if n.type.shape}
    return [
        {
            s: min((BATCH_SIZES if s in batch else OTHER_SIZES)[k], limits.get(s, sys.maxsize))
            for s in _symbols(graph)
        }
        for k in range(2)
    ]


def _largest(expr: sympy.Expr, s: sympy.Symbol, bound: int) -> int:
    """The largest n >= 1 with expr(s=n) <= bound, for expr growing with s (bisection)."""
    lo, hi = 1, bound
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if expr.subs(s, mid) <= bound else (lo, mid - 1)
    return lo


def _symbols(graph: Graph) -> list[sympy.Symbol]:
    """The symbolic input dims in order of first appearance."""
    dims = [d for n in graph.inputs for d in n.type.shape if isinstance(d, sympy.Symbol)]
    return list(dict.fromkeys(dims))


@contextlib.contextmanager
def imported_package(package_dir: Path, name: str) -> Iterator[ModuleType]:
    """Import the package `package_dir/name` under a fresh module name, forgotten afterwards,
    so that neither an installed package of that name nor an earlier build gets in the way."""
    alias = f"_nlc_onnx_{name}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(
        alias, package_dir / name / "__init__.py", submodule_search_locations=[]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for key in [k for k in sys.modules if k == alias or k.startswith(alias + ".")]:
            del sys.modules[key]


def seeded_model(package: ModuleType, folder: Path | None = None) -> torch.nn.Module:
    """The package's model in eval mode, with the weights that go into model.onnx: the
    build's weights.pt (trained, or transformed by passes) if `folder` has one, else seeded."""
    torch.manual_seed(SEED)
    model = package.Model().eval()
    trained = folder / WEIGHTS_FILE if folder is not None else None
    if trained is not None and trained.is_file():
        model.load_state_dict(torch.load(trained, map_location="cpu", weights_only=True))
    return model


def example_inputs(
    graph: Graph, size: dict[sympy.Symbol, int], seed: int
) -> tuple[torch.Tensor, ...]:
    """Random inputs in graph order; integer inputs hold valid ids for the embeddings they feed."""
    gen = torch.Generator().manual_seed(seed)
    users = graph.users()
    tensors = []
    for node in graph.inputs:
        shape = tuple(int(sympy.sympify(d).subs(size)) for d in node.type.shape)
        dtype = getattr(torch, DTYPES[node.type.dtype])
        if node.type.dtype in FLOAT_DTYPES:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
        elif node.type.dtype == "bool":
            tensors.append(torch.rand(shape, generator=gen) < 0.5)
        else:
            readers = (graph.nodes[u] for u in users.get(Value(node.name), []))
            tables = [r.attrs.num for r in readers if r.op == "embedding"]
            # 0 and 1 are valid for any other use of integers (indices, flags).
            high = min(tables, default=2)
            tensors.append(torch.randint(0, high, shape, generator=gen, dtype=dtype))
    return tuple(tensors)


def _export(
    model: torch.nn.Module,
    graph: Graph,
    inputs: tuple[torch.Tensor, ...],
    limits: dict[sympy.Symbol, int],
    opset: int,
):
    """torch.export, then translation to ONNX. torch.export is called directly because
    torch.onnx.export would quietly fix a dim that cannot stay dynamic to its example size."""
    dims = {s: torch.export.Dim(str(s), max=limits.get(s)) for s in _symbols(graph)}
    shapes = tuple(
        {i: dims[d] for i, d in enumerate(n.type.shape) if d in dims} or None for n in graph.inputs
    )
    with _quiet():
        try:
            program = torch.export.export(model, inputs, dynamic_shapes=shapes, strict=False)
            return torch.onnx.export(
                program,
                inputs,
                dynamic_shapes=shapes,
                input_names=[n.name for n in graph.inputs],
                output_names=list(graph.outputs),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        except Exception as e:  # anything torch cannot export is reported, not a crash of nlc
            raise NlcError(
                f"cannot export {graph.name} to ONNX opset {opset}: {_cause(e)}",
                None,
                "build without ONNX with --no-onnx",
            ) from e


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's own warnings (deprecations inside torch, optional torchvision)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _cause(e: BaseException) -> str:
    """The innermost error's message, without the exporter's advice and terminal colours."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.split("\n\nThe error above occurred")[0] or type(e).__name__


def _save(program, path: Path, info: dict[str, Any]) -> None:
    """Add the build's metadata, keep only module paths of the exporter's node annotations,
    and write the file (weights over 2 GB go to model.onnx.data beside it)."""
    model = program.model
    model.metadata_props.update(
        {"nlc_version": info["nlc_version"], "spec_sha256": info["spec_sha256"]}
    )
    for node in model.graph.all_nodes():
        for key in [k for k in node.metadata_props if k not in KEPT_NODE_METADATA]:
            del node.metadata_props[key]
    _unclash_outputs(model.graph)
    program.save(path)


def _unclash_outputs(graph) -> None:
    """Rename inner values that carry a graph output's name. The exporter names values after
    torch.export's nodes (`relu`, `relu_1`, ...), so an output called `relu` (the last node of
    a repeated block) would otherwise appear twice, which ONNX forbids."""
    outputs = {id(v) for v in graph.outputs}
    output_names = {v.name for v in graph.outputs}
    taken = {v.name for node in graph.all_nodes() for v in node.outputs}
    for node in graph.all_nodes():
        for value in node.outputs:
            if id(value) in outputs or value.name not in output_names:
                continue
            i = 1
            while f"{value.name}_inner{i}" in taken:
                i += 1
            value.name = f"{value.name}_inner{i}"
            taken.add(value.name)


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise NlcError(f"the exported {path.name} is not valid ONNX: {e}") from e


def _verify(
    model: torch.nn.Module, graph: Graph, path: Path, sizes: list[dict[sympy.Symbol, int]]
) -> list[dict[str, Any]]:
    """Run the file with onnxruntime at each size and compare it with PyTorch; raise NlcError
    naming every output and size that differs. Returns the figures of each size."""
    inputs = [example_inputs(graph, size, SEED + 1 + k) for k, size in enumerate(sizes)]
    results = _run_onnxruntime(path, [n.name for n in graph.inputs], inputs)
    checks, failures = [], []
    for size, args, got in zip(sizes, inputs, results, strict=True):
        with torch.no_grad():
            expected = model(*args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        outputs = {}
        for name, want, have in zip(graph.outputs, expected, got, strict=True):
            outputs[name], problem = _compare(want.numpy(), have)
            if problem:
                at = ", ".join(f"{s}={n}" for s, n in size.items())
                failures.append(f"output {name!r} at {at}: {problem}")
        checks.append({"sizes": {str(s): n for s, n in size.items()}, "outputs": outputs})
    if failures:
        raise NlcError(
            f"the ONNX export of {graph.name} does not match PyTorch under onnxruntime: "
            + "; ".join(failures),
            None,
            "build with --skip-verify to keep the file anyway, or --no-onnx to skip it",
        )
    return checks


def _run_onnxruntime(
    path: Path, names: list[str], inputs: list[tuple[torch.Tensor, ...]]
) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [
            session.run(None, {n: t.numpy() for n, t in zip(names, args, strict=True)})
            for args in inputs
        ]
    except Exception as e:  # onnxruntime's errors have no common base class below Exception
        raise NlcError(
            f"onnxruntime {ort.__version__} cannot run {path.name}: {e}",
            None,
            "choose a lower --opset, or build with --skip-verify",
        ) from e


def output_error(want: np.ndarray, have: np.ndarray) -> tuple[float, float]:
    """Max abs error of `have` against `want` (in float64), and the output's scale: max |want|,
    floored so that an all-zero output does not demand bit-exact zeros."""
    error = float(np.abs(want.astype(np.float64) - have.astype(np.float64)).max(initial=0.0))
    return error, max(float(np.abs(want).max(initial=0.0)), float(np.finfo(np.float32).eps))


def _compare(want: np.ndarray, have: np.ndarray) -> tuple[dict[str, float], str | None]:
    """Max abs error and output scale (max |PyTorch output|, 3 digits), and what is wrong."""
    if want.shape != have.shape:
        return {}, f"shape {list(have.shape)}, PyTorch gives {list(want.shape)}"
    error, scale = output_error(want, have)
    figures = {"max_abs_error": float(f"{error:.3g}"), "scale": float(f"{scale:.3g}")}
    if not error <= TOLERANCE * scale:  # also catches NaN
        return figures, f"max abs error {error:.3g} > {TOLERANCE:g} x output scale {scale:.3g}"
    return figures, None
