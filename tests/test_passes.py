"""The pass manager and the decomposition passes (svd, tucker, cp, tt).

Random MLP, CNN and transformer specs (see `strategies.py`) check the invariants of every
pass: the verifier passes, the model's interface keeps its types, the rewritten model builds
with the parameter count of its IR, and at full rank the decomposed weights reproduce the
dense model's outputs.
"""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import Case, _spec, any_specs
from tensorly.decomposition import parafac, partial_tucker, tensor_train_matrix
from tensorly.tenalg import multi_mode_dot, svd_interface

import nlc
from nlc.emit.package import package_files
from nlc.errors import NlcError
from nlc.ir import Graph
from nlc.ir.printer import format_graph
from nlc.passes import PASSES, Pass, PassResult, run_passes
from nlc.passes.select import Selection

GOLDEN = Path(__file__).resolve().parent / "golden" / "passes"
EXAMPLES = settings(max_examples=40, deadline=None)
FULL = {"svd": 1.0, "tucker": 1.0, "cp": 1.0, "tt": 1.0}

# A conv stack with a linear head: every pass has something to rewrite and something to skip.
SMALL = _spec(
    "small",
    {"x": {"shape": ["B", 3, 8, 8]}},
    None,
    [
        {"op": "conv2d", "name": "conv1", "out": 8, "kernel": 3, "padding": 1},
        "relu",
        {"op": "conv2d", "name": "conv2", "out": 12, "kernel": 3, "stride": 2, "bias": False},
        {"op": "conv2d", "name": "dw", "out": 12, "kernel": 3, "groups": 12, "padding": 1},
        {"op": "conv2d", "name": "pw", "out": 12, "kernel": 1},
        "global_avgpool",
        {"op": "linear", "name": "fc", "out": 24},
        "relu",
        {"op": "linear", "name": "head", "out": 6},
    ],
)


def _load(builder, doc: dict, unique: bool = True):
    """Spec and graph of a document, without building its package."""
    if unique:
        doc = {**doc, "name": f"{doc['name']}_{next(builder.counter)}"}
    return nlc.load(builder.write_spec(doc))


def _package(builder, graph: Graph, spec) -> ModuleType:
    """Emit `graph` under a fresh package name and import it."""
    graph = copy.copy(graph)
    graph.name = f"{graph.name}_p{next(builder.counter)}"
    root = builder.root / graph.name
    for rel, text in package_files(graph, spec).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(graph.name)
    finally:
        sys.path.remove(str(root))


def _inputs(case: Case, graph: Graph) -> list[torch.Tensor]:
    """Seeded random inputs at the case's sizes: ids below their bound, floats otherwise."""
    torch.manual_seed(1)
    out = []
    for node in graph.inputs:
        shape = [case.dims.get(str(d), d) for d in node.type.shape]
        bound = case.id_bounds.get(node.name)
        out.append(torch.randn(*shape) if bound is None else torch.randint(0, bound, shape))
    return out


def _seeded(module: ModuleType) -> torch.nn.Module:
    torch.manual_seed(0)
    return module.Model().eval()


def _interface(graph: Graph) -> list[str]:
    return [str(n.type) for n in graph.inputs] + [
        f"{k}: {graph.type_of(v)}" for k, v in graph.outputs.items()
    ]


def _options(name: str, rank, modes: int) -> dict:
    return {"rank": rank, "modes": modes} if name == "tt" else {"rank": rank}


# -- invariants on random models ----------------------------------------------------------------


@EXAMPLES
@given(
    any_specs,
    st.sampled_from(sorted(FULL)),
    st.sampled_from([1, 0.3, 0.5, 1.0]),  # an int above a layer's full rank is an error
    st.sampled_from([2, 3]),
)
def test_structural_pass_keeps_interface_and_builds(builder, case, name, rank, modes):
    spec, graph = _load(builder, case.spec)
    new, weights, report = run_passes(graph, None, [(name, _options(name, rank, modes))])
    assert weights is None
    assert _interface(new) == _interface(graph)
    assert all("skipped" in row or row["params_after"] > 0 for row in report)
    model = _package(builder, new, spec).Model().eval()
    assert sum(p.numel() for p in model.parameters()) == new.num_params()
    buffers = {k for k, _ in model.named_buffers()}
    state = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in buffers}
    assert state == {k: p.shape for k, p in new.parameters()}
    with torch.no_grad():
        model(*_inputs(case, new))  # runs (the output shapes are the IR's: test_properties)


@EXAMPLES
@given(any_specs, st.sampled_from(sorted(FULL)))
def test_full_rank_reproduces_the_dense_model(builder, case, name):
    spec, graph = _load(builder, case.spec)
    dense = _seeded(_package(builder, graph, spec))
    new, weights, report = run_passes(graph, dense.state_dict(), [(name, {"rank": FULL[name]})])
    model = _package(builder, new, spec).Model().eval()
    model.load_state_dict(weights)
    assert all(row["error"] < 1e-6 for row in report if "skipped" not in row)
    inputs = _inputs(case, graph)
    with torch.no_grad():
        want, got = dense(*inputs), model(*inputs)
    for a, b in zip(*((t if isinstance(t, tuple) else (t,)) for t in (want, got)), strict=True):
        scale = float(a.abs().max()) + 1e-12
        assert float((a - b).abs().max()) <= 1e-4 * scale


# -- weight-aware runs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(builder):
    """The SMALL model: spec, graph and a seeded dense state_dict."""
    spec, graph = _load(builder, SMALL)
    return spec, graph, _seeded(_package(builder, graph, spec)).state_dict()


def _rows(report: list[dict]) -> dict[str, dict]:
    return {row["node"]: row for row in report}


def _relative(w: torch.Tensor, approx: torch.Tensor) -> float:
    return float(tl.norm(w - approx) / tl.norm(w))


@pytest.mark.filterwarnings("ignore:Trying to compute SVD")  # parafac's SVD init at rank 5
def test_errors_equal_tensorly_own(small):
    """The report's error is what the same TensorLy call gives, and the stored factors are
    those of that call (they rebuild the same approximation)."""
    _, graph, weights = small
    fc, conv = weights["fc.weight"].double(), weights["conv2.weight"].double()
    with tl.backend_context("pytorch"):
        _, w, report = run_passes(graph, weights, [("svd", {"rank": 3})])
        u, s, v = svd_interface(fc, n_eigenvecs=3)
        assert _rows(report)["fc"]["error"] == pytest.approx(_relative(fc, u * s @ v), rel=1e-9)
        rebuilt = w["fc.1.weight"].double() @ w["fc.0.weight"].double()
        assert _relative(fc, rebuilt) == pytest.approx(_relative(fc, u * s @ v), rel=1e-5)

        _, w, report = run_passes(graph, weights, [("tucker", {"rank": [3, 4]})])
        (core, factors), _ = partial_tucker(
            conv, rank=[4, 3], modes=[0, 1], init="svd", n_iter_max=100, tol=1e-5, random_state=0
        )
        expected = _relative(conv, multi_mode_dot(core, factors, modes=[0, 1]))
        assert _rows(report)["conv2"]["rank"] == [3, 4]
        assert _rows(report)["conv2"]["error"] == pytest.approx(expected, rel=1e-9)
        pieces = [w[f"conv2.{i}.weight"].double() for i in range(3)]
        rebuilt = multi_mode_dot(
            pieces[1], [pieces[2][:, :, 0, 0], pieces[0][:, :, 0, 0].T], [0, 1]
        )
        assert _relative(conv, rebuilt) == pytest.approx(expected, rel=1e-5)

        _, w, report = run_passes(graph, weights, [("cp", {"rank": 5})])
        cp = parafac(conv, 5, init="svd", n_iter_max=200, tol=1e-8, random_state=0)
        expected = _relative(conv, tl.cp_to_tensor(cp))
        assert _rows(report)["conv2"]["error"] == pytest.approx(expected, rel=1e-9)
        a_in, a_h, a_w, a_out = (w[f"conv2.{i}.weight"].double() for i in range(4))
        rebuilt = torch.einsum(
            "or,rc,rh,rw->ochw",
            a_out[:, :, 0, 0],
            a_in[:, :, 0, 0],
            a_h[:, 0, :, 0],
            a_w[:, 0, 0, :],
        )
        assert _relative(conv, rebuilt) == pytest.approx(expected, rel=1e-5)

        _, w, report = run_passes(graph, weights, [("tt", {"rank": 2})])
        row = _rows(report)["fc"]
        assert row["rank"] == [1, 2, 1]
        tensor = fc.T.reshape(3, 4, 6, 4)  # in 12 = 3 x 4, out 24 = 6 x 4 (out descending)
        approx = tl.tt_matrix_to_tensor(tensor_train_matrix(tensor, [1, 2, 1])).reshape(12, 24)
        expected = _relative(fc.T, approx)
        assert row["error"] == pytest.approx(expected, rel=1e-9)
        cores = [w[f"fc.cores.{k}"].double() for k in range(2)]
        assert _relative(fc.T, tl.tt_matrix_to_tensor(cores).reshape(12, 24)) == pytest.approx(
            expected, rel=1e-5
        )


def test_energy_rank_is_the_smallest_keeping_that_energy(small):
    _, graph, weights = small
    _, _, report = run_passes(graph, weights, [("svd", {"rank": {"energy": 0.8}})])
    power = torch.linalg.svdvals(weights["fc.weight"].double()) ** 2
    kept = power.cumsum(0) / power.sum()
    rank = _rows(report)["fc"]["rank"]
    assert kept[rank - 1] >= 0.8 > kept[rank - 2]


def test_skipped_layers_say_why(builder, small):
    _, graph, weights = small
    _, _, report = run_passes(graph, weights, [("tucker", {}), ("tt", {"modes": 3})])
    rows = {(row["pass"], row["node"]): row.get("skipped") for row in report}
    assert rows[("tucker", "dw")] == "grouped convolution (groups=12)"
    assert rows[("tucker", "pw")].startswith("1x1 convolution")
    assert (
        rows[("tt", "head")] == "its output features (6) do not split into 3 factors of at least 2"
    )
    assert rows[("tt", "fc")] is None and rows[("tucker", "conv1")] is None

    tied = _spec(
        "tied",
        {"x": {"shape": ["B", 8]}},
        None,
        [
            {"op": "linear", "name": "fc1", "out": 8},
            {"op": "linear", "name": "fc2", "out": 8, "tie": "fc1"},
        ],
    )
    _, graph = _load(builder, tied)
    _, _, report = run_passes(graph, None, [("svd", {"rank": 2})])
    assert _rows(report)["fc1"]["skipped"] == "other layers share its weight"
    assert _rows(report)["fc2"]["skipped"] == "its weight is tied to 'fc1'"


def test_selection_by_glob_and_block(builder):
    doc = _spec(
        "blocks",
        {"x": {"shape": ["B", 8]}},
        {"mlp": {"params": {"w": "int"}, "graph": [{"op": "linear", "name": "fc", "out": "${w}"}]}},
        [
            {"op": "mlp", "name": "layers", "w": 8, "repeat": 3},
            {"op": "linear", "name": "head", "out": 4},
        ],
    )
    _, graph = _load(builder, doc)

    def rewritten(options: dict) -> list[str]:
        _, _, report = run_passes(graph, None, [("svd", {"rank": 2, **options})])
        return [row["node"] for row in report if "op_after" in row]

    assert rewritten({}) == ["layers.0.fc", "layers.1.fc", "layers.2.fc", "head"]
    assert rewritten({"blocks": ["mlp"]}) == ["layers.0.fc", "layers.1.fc", "layers.2.fc"]
    assert rewritten({"select": ["layers.1.*", "head"]}) == ["layers.1.fc", "head"]
    with pytest.raises(NlcError, match="no instance of a block 'mpl'") as e:
        rewritten({"blocks": ["mpl"]})
    assert e.value.hint == "did you mean 'mlp'?"


@pytest.mark.parametrize(
    "name", [n for n in sorted(PASSES) if issubclass(PASSES[n].Options, Selection)]
)
def test_selector_matching_nothing_is_identity(small, name):
    _, graph, weights = small
    copied = copy.deepcopy(graph)
    result = PASSES[name].run(copied, weights, PASSES[name].Options(select="nothing.*"))
    assert not result.modified and result.report == []
    assert format_graph(result.graph) == format_graph(graph)
    assert result.weights == weights and result.weights is not weights


def test_run_passes_leaves_its_arguments_alone(small):
    _, graph, weights = small
    before, keys = format_graph(graph), list(weights)
    new, new_weights, _ = run_passes(graph, weights, [("svd", {}), ("tucker", {})])
    assert format_graph(graph) == before and list(weights) == keys
    assert "fc.weight" in weights and "fc.weight" not in new_weights
    assert new.nodes["fc"].op == "lowrank_linear" and graph.nodes["fc"].op == "linear"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message", "hint"),
    [
        ([("svdd", {})], "unknown pass 'svdd'", "did you mean 'svd'?"),
        ([("svd", {"rnak": 2})], "pass 'svd' has no option 'rnak'", "did you mean 'rank'?"),
        ([("svd", {"rank": 1.5})], "fractional rank must be in (0, 1]", "int (absolute)"),
        ([("svd", {"rank": 0})], "absolute rank must be at least 1", "int (absolute)"),
        ([("tucker", {"rank": [1, 2, 3]})], "a list [in, out]", "one rank for"),
        ([("svd", {"ops": ["conv2d"]})], "option 'ops'", "op types to rewrite"),
        ([("tt", {"modes": 1})], "option 'modes'", "number of cores"),
        ([("svd", {"rank": 500})], "rank 500 is above the full rank", "give at most"),
        ([("tucker", {"rank": [500, 2]})], "rank 500 is above the full rank", "give at most"),
        ([("channels", {"select": "head"})], "can rewrite none of the selected", "select nodes"),
        ([("svd", {"select": "fcc"})], "select 'fcc' matches no node", "did you mean 'fc'?"),
        ([("svd", {"select": "conv1"})], "'conv1' matches 1 node(s) (conv2d), none", "linear"),
        (
            [("svd", {}), ("cp", {"rank": {"energy": 0.9}})],
            "pass 'cp': rank {energy: 0.9} needs the weights",
            "give weights",
        ),
    ],
)
def test_bad_pipelines_are_user_errors(small, steps, message, hint):
    _, graph, _ = small
    with pytest.raises(NlcError) as e:
        run_passes(graph, None, steps)
    assert message in e.value.message
    assert hint in e.value.hint


def test_missing_weight_names_the_pass_and_the_key(small):
    _, graph, weights = small
    partial = {k: v for k, v in weights.items() if k != "conv1.bias"}
    with pytest.raises(NlcError, match="pass 'tucker': the weights have no 'conv1.bias'"):
        run_passes(graph, partial, [("tucker", {})])


def test_a_pass_that_breaks_the_graph_is_named_with_those_before(small, monkeypatch):
    def broken(graph, weights, options, target=None) -> PassResult:
        graph.nodes["fc"].outputs = [graph.nodes["relu"].type]  # a wrong recorded type
        return PassResult(graph, weights, True)

    monkeypatch.setitem(PASSES, "broken", Pass("broken", "", PASSES["svd"].Options, broken))
    _, graph, _ = small
    with pytest.raises(NlcError, match="pass 'broken' broke the model: fc: recorded type") as e:
        run_passes(graph, None, [("svd", {"select": "head"}), ("tt", {}), ("broken", {})])
    assert e.value.hint.startswith("passes run before it: 'svd', 'tt'")


# -- golden IR ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [("svd", {"rank": 0.5}), ("tucker", {"rank": [2, 4]}), ("cp", {"rank": 6}), ("tt", {})],
)
def test_printed_ir_after_pass_matches_golden(builder, update_golden, name, options):
    _, graph = _load(builder, SMALL, unique=False)
    after, _, _ = run_passes(graph, None, [(name, options)])
    for path, text in (
        (GOLDEN / "before.txt", format_graph(graph)),
        (GOLDEN / f"{name}.txt", format_graph(after)),
    ):
        if update_golden:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        else:
            assert path.is_file(), f"{path} is missing: run `pytest --update-golden` to create it"
            assert text == path.read_text(encoding="utf-8")
