"""Property-based tests of the compiler core on random valid specs (see `strategies.py`).

Each random spec is lowered, emitted in memory, written to a temporary folder and imported;
the generated model must agree with the IR it came from.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ruff.__main__ import find_ruff_bin
from strategies import Case, any_specs, shuffled

from nlc.ir.printer import format_graph
from nlc.ir.types import DTYPES, sym
from nlc.ir.verify import verify

EXAMPLES = settings(max_examples=40, deadline=None)


def _sizes(shape, case: Case) -> tuple[int, ...]:
    """A shape of the IR with the case's concrete sizes substituted for its symbols."""
    subs = {sym(k): v for k, v in case.dims.items()}
    return tuple(int(sympy.sympify(d).subs(subs)) for d in shape)


def _unplaced(source: str) -> str:
    return re.sub(r"\(spec\.yaml:\d+\)", "(spec.yaml)", source)


def _example_inputs(case: Case, graph) -> list[torch.Tensor]:
    out = []
    for node in graph.inputs:
        shape = _sizes(node.type.shape, case)
        if node.name in case.id_bounds:
            out.append(torch.randint(0, case.id_bounds[node.name], shape))
        else:
            out.append(torch.randn(shape))
    return out


@EXAMPLES
@given(any_specs)
def test_generated_model_agrees_with_ir(builder, case: Case):
    built = builder.build(case.spec)
    graph = built.graph
    verify(graph)
    model = built.load().Model().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        result = model(*_example_inputs(case, graph))
    results = result if isinstance(result, tuple) else (result,)
    expected = [graph.type_of(v) for v in graph.outputs.values()]
    assert [tuple(r.shape) for r in results] == [_sizes(t.shape, case) for t in expected]
    assert [r.dtype for r in results] == [getattr(torch, DTYPES[t.dtype]) for t in expected]

    assert sum(p.numel() for p in model.parameters()) == graph.num_params()
    buffers = {name for name, _ in model.named_buffers()}
    state = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in buffers}
    assert state == {name: p.shape for name, p in graph.parameters()}


@EXAMPLES
@given(any_specs, st.integers(0, 2**16))
def test_emission_is_deterministic(builder, case: Case, seed: int):
    first = builder.build(case.spec, unique=False)
    again = builder.build(case.spec, unique=False)
    assert again.files == first.files
    assert format_graph(again.graph) == format_graph(first.graph)
    # Mapping order in the document (nodes' keys, blocks, top level) does not matter either,
    # except for the spec line numbers quoted in class comments.
    reordered = builder.build(shuffled(case.spec, seed), unique=False)
    for module in ("model.py", "layers.py"):
        assert _unplaced(reordered.text(module)) == _unplaced(first.text(module))
    assert format_graph(reordered.graph) == format_graph(first.graph)


@EXAMPLES
@given(any_specs)
def test_one_class_per_block_and_no_nlc_import(builder, case: Case):
    built = builder.build(case.spec)
    model_py = built.text("model.py")
    # Every block of these specs is used at widths that only change literals: one class each.
    classes = [line for line in model_py.splitlines() if line.startswith("class ")]
    assert len(classes) == len(case.blocks) + 1
    for rel, text in built.files.items():
        if rel.endswith(".py"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    assert not any(a.name.split(".")[0] == "nlc" for a in node.names), rel
                elif isinstance(node, ast.ImportFrom):
                    assert node.level or node.module.split(".")[0] != "nlc", rel


_REBUILD = """
import json, sys
import nlc
from nlc.emit.package import package_files
from nlc.ir.printer import format_graph
out = {}
for path in sys.argv[1:]:
    spec, graph = nlc.load(path)
    out[path] = {**package_files(graph, spec), "ir": format_graph(graph)}
print(json.dumps(out))
"""


@settings(max_examples=3, deadline=None)
@given(st.lists(any_specs, min_size=8, max_size=8))
def test_batch_is_lint_clean_and_independent_of_hash_seed(builder, cases: list[Case]):
    """ruff runs once over a batch of generated packages; a fresh interpreter with another
    hash seed (so another set iteration order) rebuilds the batch byte for byte."""
    builds = [builder.build(case.spec) for case in cases]
    roots = [str(b.root) for b in builds]
    ruff = find_ruff_bin()
    fmt = subprocess.run(
        [ruff, "format", "--isolated", "--line-length", "100", "--check", *roots],
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run(
        [ruff, "check", "--isolated", "--line-length", "100", "--select", "E,F,I,B,UP", *roots],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    paths = [str(b.spec.path) for b in builds]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-c", _REBUILD, *paths], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    rebuilt = json.loads(proc.stdout)
    for build, path in zip(builds, paths, strict=True):
        assert rebuilt[path] == {**build.files, "ir": format_graph(build.graph)}
