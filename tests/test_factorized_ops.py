"""Factorized ops (lowrank_linear, tucker_conv2d, cp_conv2d, tt_linear): the parameter layout
that compression passes fill, output shapes, equivalence with the dense layer their factors
multiply out to, true MAC counts, costs that add up the factor layers, ONNX, and rejections."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

import nlc
from nlc.analysis.cost import analyze
from nlc.analysis.counts import concretize, node_counts
from nlc.analysis.plan import byte_size
from nlc.emit.onnx import export_onnx
from nlc.errors import NlcError
from nlc.ops import REGISTRY
from nlc.targets import load_target

DIMS = {"B": 2, "T": 3}
# PyTorch's note on an even kernel with padding 'same', which the cases exercise on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

# name -> (input shape, op item, the parameter layout: the contract with the passes)
CASES = {
    "lowrank": (
        "[B, T, 12]",
        "{op: lowrank_linear, out: 7, rank: 3}",
        {"0.weight": (3, 12), "1.weight": (7, 3), "1.bias": (7,)},
    ),
    "lowrank-no-bias": (
        "[B, 12]",
        "{op: lowrank_linear, out: 5, rank: 8, bias: false}",
        {"0.weight": (8, 12), "1.weight": (5, 8)},
    ),
    "tucker-stride": (
        "[B, 6, 9, 10]",
        "{op: tucker_conv2d, out: 8, kernel: 3, stride: 2, ranks: [4, 5]}",
        {"0.weight": (4, 6, 1, 1), "1.weight": (5, 4, 3, 3), "2.weight": (8, 5, 1, 1)}
        | {"2.bias": (8,)},
    ),
    "tucker-same": (
        "[B, 6, 9, 10]",
        "{op: tucker_conv2d, out: 8, kernel: [3, 2], padding: same, ranks: [2, 3]}",
        {"0.weight": (2, 6, 1, 1), "1.weight": (3, 2, 3, 2), "2.weight": (8, 3, 1, 1)}
        | {"2.bias": (8,)},
    ),
    "tucker-valid": (  # r_in above the input channels is allowed
        "[B, 6, 9, 10]",
        "{op: tucker_conv2d, out: 4, kernel: [2, 3], padding: valid, dilation: [2, 1], "
        "bias: false, ranks: [7, 3]}",
        {"0.weight": (7, 6, 1, 1), "1.weight": (3, 7, 2, 3), "2.weight": (4, 3, 1, 1)},
    ),
    "cp-stride": (
        "[B, 6, 9, 10]",
        "{op: cp_conv2d, out: 8, kernel: [3, 5], stride: [2, 1], padding: [1, 2], rank: 4}",
        {"0.weight": (4, 6, 1, 1), "1.weight": (4, 1, 3, 1), "2.weight": (4, 1, 1, 5)}
        | {"3.weight": (8, 4, 1, 1), "3.bias": (8,)},
    ),
    "cp-same-even": (
        "[B, 6, 9, 10]",
        "{op: cp_conv2d, out: 5, kernel: [2, 3], padding: same, dilation: [1, 2], rank: 3, "
        "bias: false}",
        {"0.weight": (3, 6, 1, 1), "1.weight": (3, 1, 2, 1), "2.weight": (3, 1, 1, 3)}
        | {"3.weight": (5, 3, 1, 1)},
    ),
    "cp-valid": (
        "[B, 6, 9, 10]",
        "{op: cp_conv2d, out: 8, kernel: 3, stride: 2, padding: valid, dilation: 2, rank: 6}",
        {"0.weight": (6, 6, 1, 1), "1.weight": (6, 1, 3, 1), "2.weight": (6, 1, 1, 3)}
        | {"3.weight": (8, 6, 1, 1), "3.bias": (8,)},
    ),
    "tt-2": (
        "[B, 12]",
        "{op: tt_linear, out: 20, in_modes: [3, 4], out_modes: [4, 5], ranks: [1, 3, 1]}",
        {"cores.0": (1, 3, 4, 3), "cores.1": (3, 4, 5, 1), "bias": (20,)},
    ),
    "tt-3": (
        "[B, T, 24]",
        "{op: tt_linear, out: 8, in_modes: [2, 3, 4], out_modes: [2, 2, 2], "
        "ranks: [1, 2, 3, 1], bias: false}",
        {"cores.0": (1, 2, 2, 2), "cores.1": (2, 3, 2, 3), "cores.2": (3, 4, 2, 1)},
    ),
}


def _doc(name: str, shape: str | list, item: str | dict) -> dict:
    """A one-node spec: `item`, named f, reads input x of `shape` (both may be YAML flow)."""
    shape, item = (yaml.safe_load(v) if isinstance(v, str) else v for v in (shape, item))
    return {
        "nlc": 1,
        "name": f"fact_{name.replace('-', '_')}",
        "inputs": {"x": {"shape": shape}},
        "graph": [{**item, "name": "f"}],
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, builder):
    """(name, built package, its model in float64, an input of DIMS)."""
    shape, item, _ = CASES[request.param]
    built = builder.build(_doc(request.param, shape, item))
    torch.manual_seed(0)
    model = built.load().Model().double().eval()
    x = torch.randn(*(concretize(d, DIMS) for d in built.graph.inputs[0].type.shape))
    return request.param, built, model, x.double()


def test_parameters_follow_the_contract(case):
    name, built, model, x = case
    layout = {f"f.{k}": v for k, v in CASES[name][2].items()}
    assert {k: p.shape for k, p in built.graph.parameters()} == layout
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    assert sum(p.numel() for p in model.parameters()) == built.graph.num_params()


def test_output_shape_is_the_irs(case):
    _, built, model, x = case
    (out,) = built.graph.outputs.values()
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == tuple(concretize(d, DIMS) for d in built.graph.type_of(out).shape)


def test_macs_are_those_of_the_factor_layers(case):
    _, built, model, x = case
    (count,) = [c for c in node_counts(built.graph, DIMS) if c.node.name == "f"]
    with FlopCounterMode(display=False) as flops:
        model(x)
    assert flops.get_total_flops() == 2 * count.macs


def tt_matrix(cores: list[torch.Tensor]) -> torch.Tensor:
    """W^T [in, out] of TT-matrix cores [r_k, m_k, n_k, r_k+1], row-major multi-indices."""
    full = cores[0]
    for core in cores[1:]:
        full = torch.einsum("...s,smnt->...mnt", full, core)
    full = full[0, ..., 0]  # [m_0, n_0, m_1, n_1, ...]
    d = len(cores)
    full = full.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    return full.reshape(full.shape[:d].numel(), -1)


def _dense(op: str, sd: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of the dense layer that the factors multiply out to."""
    if op == "lowrank_linear":
        return sd["1.weight"] @ sd["0.weight"], sd.get("1.bias")
    if op == "tucker_conv2d":
        u, core, v = sd["0.weight"][:, :, 0, 0], sd["1.weight"], sd["2.weight"][:, :, 0, 0]
        return torch.einsum("ob,bapq,ac->ocpq", v, core, u), sd.get("2.bias")
    if op == "cp_conv2d":
        u, kh, kw = sd["0.weight"][:, :, 0, 0], sd["1.weight"][:, 0, :, 0], sd["2.weight"][:, 0, 0]
        v = sd["3.weight"][:, :, 0, 0]
        return torch.einsum("or,rp,rq,rc->ocpq", v, kh, kw, u), sd.get("3.bias")
    cores = [v for k, v in sd.items() if k.startswith("cores.")]  # in order
    return tt_matrix(cores).T, sd.get("bias")


def test_factors_multiply_out_to_a_dense_layer(case):
    _, built, model, x = case
    node = built.graph.nodes["f"]
    with torch.no_grad():
        for p in model.parameters():  # biases too, which start at zero
            p.normal_()
        weight, bias = _dense(node.op, dict(model.f.state_dict()))
        if node.op.endswith("linear"):
            want = F.linear(x, weight, bias)
        else:
            a = node.attrs
            want = F.conv2d(x, weight, bias, a.stride, a.padding, a.dilation)
        got = model(x)
    assert got.shape == want.shape
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


def test_tt_cores_are_tensorlys_layout():
    tl = pytest.importorskip("tensorly")
    from tensorly.tt_matrix import tt_matrix_to_matrix

    cores = [torch.randn(1, 2, 3, 2), torch.randn(2, 3, 2, 4), torch.randn(4, 2, 2, 1)]
    with tl.backend_context("pytorch"):
        want = tt_matrix_to_matrix(cores)
    torch.testing.assert_close(tt_matrix(cores), want)


def test_fresh_tt_linear_has_linear_like_scale(builder):
    item = {"op": "tt_linear", "out": 512, "in_modes": [8, 8, 8], "out_modes": [8, 8, 8]}
    built = builder.build(_doc("tt_scale", ["B", 512], {**item, "ranks": [1, 16, 16, 1]}))
    torch.manual_seed(0)
    cores = list(built.load().Model().f.cores)
    with torch.no_grad():
        std = tt_matrix(cores).std().item()
    assert 0.8 < std * (3 * 512) ** 0.5 < 1.2  # nn.Linear's uniform(+-1/sqrt(in))


@pytest.mark.parametrize(
    ("name", "launches", "temps"),
    [
        ("lowrank", 2, [(2, 3, 3)]),
        ("tucker-stride", 3, [(2, 4, 9, 10), (2, 5, 4, 4)]),
        ("cp-stride", 4, [(2, 4, 9, 10), (2, 4, 5, 10), (2, 4, 5, 10)]),
        # Each core: a copy of the state (12, then 48 per token), a matmul; then the bias.
        ("tt-2", 5, [(2, 12), (2, 48), (2, 48)]),
    ],
)
def test_cost_adds_up_the_factor_layers(builder, name, launches, temps):
    shape, item, _ = CASES[name]
    built = builder.build(_doc(name, shape, item))
    node = built.graph.nodes["f"]
    ins = built.graph.input_types(node)
    cost = REGISTRY[node.op].cost(node.attrs, ins, node.outputs, node.params, byte_size(None))

    def f32(shape) -> int:
        return 4 * torch.Size([concretize(d, DIMS) for d in shape]).numel()

    x, y, between = f32(ins[0].shape), f32(node.outputs[0].shape), sum(map(f32, temps))
    bias = y if node.op == "tt_linear" else 0  # a kernel of its own
    assert cost.launches == launches
    assert concretize(cost.read, DIMS) == x + between + bias
    assert concretize(cost.written, DIMS) == between + y + bias
    (count,) = [c for c in node_counts(built.graph, DIMS) if c.node.name == "f"]
    flops = {c: concretize(v, DIMS) for c, v in cost.flops.items()}
    assert sum(flops.values()) == 2 * count.macs + bias // 4
    assert ("depthwise" in flops) == (node.op == "cp_conv2d")


def test_cost_model_prefers_a_low_rank_only_when_it_is_small(builder):
    """A [4096, 4096] linear at 4096 tokens: rank 512 has a quarter of the FLOPs; rank 4096
    twice the FLOPs and a temporary the size of the output."""
    target = load_target("h100")

    def latency(item: dict) -> float:
        doc = _doc("speed", ["B", 4096], {**item, "out": 4096})
        return analyze(builder.build(doc).graph, target, {"B": 4096}).latency

    dense = latency({"op": "linear"})
    assert latency({"op": "lowrank_linear", "rank": 512}) < dense
    assert latency({"op": "lowrank_linear", "rank": 4096}) > dense


def test_all_export_to_onnx_and_verify(builder):
    convs, linears = ["tucker-same", "cp-stride", "cp-same-even"], ["lowrank", "tt-3"]

    def node(name: str, source: str) -> dict:
        return {**yaml.safe_load(CASES[name][1]), "name": name.replace("-", "_"), "in": source}

    doc = {
        "nlc": 1,
        "name": "fact_onnx",
        "inputs": {"x": {"shape": ["B", 6, 9, 10]}, "t": {"shape": ["B", "T", 24]}},
        "graph": [*(node(n, "x") for n in convs), *(node(n, "t") for n in linears)],
        "outputs": [n.replace("-", "_") for n in convs + linears],
    }
    built = builder.build(doc)
    report = export_onnx(built.root, built.graph)  # raises when onnxruntime disagrees
    assert report["verified"]
    for check in report["checks"]:
        assert list(check["outputs"]) == doc["outputs"]


def _lower(tmp_path, shape: str, item: str):
    spec = tmp_path / "m.yaml"
    spec.write_text(f"nlc: 1\nname: m\ninputs: {{x: {{shape: {shape}}}}}\ngraph:\n  - {item}\n")
    return nlc.check(spec)


@pytest.mark.parametrize(
    ("shape", "item", "message", "hint"),
    [
        (
            "[B, 4, 8, 8]",
            "{op: tucker_conv2d, out: 4, kernel: 3, ranks: [2, 2], groups: 2}",
            "tucker_conv2d has no attribute 'groups'",
            "ranks",
        ),
        (
            "[B, 4, 8, 8]",
            "{op: cp_conv2d, out: 4, kernel: 3, rank: 2, groups: 4}",
            "cp_conv2d has no attribute 'groups'",
            "rank",
        ),
        (
            "[B, 4, 8, 8]",
            "{op: tucker_conv2d, out: 4, kernel: 3, ranks: [2]}",
            "ranks must be two positive integers",
            "[r_in, r_out]",
        ),
        (
            "[B, 12]",
            "{op: tt_linear, out: 20, in_modes: [3, 5], out_modes: [4, 5], ranks: [1, 2, 1]}",
            "multiply to 15, but the input has 12 features",
            "last dimension",
        ),
        (
            "[B, 12]",
            "{op: tt_linear, out: 21, in_modes: [3, 4], out_modes: [4, 5], ranks: [1, 2, 1]}",
            "multiply to 20, not to out (21)",
            "product is out",
        ),
        (
            "[B, 12]",
            "{op: tt_linear, out: 20, in_modes: [3, 4], out_modes: [4, 5], ranks: [2, 2, 1]}",
            "starting and ending with 1",
            "ranks: [1, 4, 1]",
        ),
        (
            "[B, 12]",
            "{op: tt_linear, out: 20, in_modes: [3, 4], out_modes: [4, 5], ranks: [1, 1]}",
            "ranks must be 3 positive integers",
            "one rank between each pair of cores",
        ),
        (
            "[B, 12]",
            "{op: tt_linear, out: 20, in_modes: [12], out_modes: [20], ranks: [1, 1]}",
            "same number (>= 2) of modes",
            "in_modes: [4, 8]",
        ),
    ],
)
def test_rejections_say_why_and_how(tmp_path, shape, item, message, hint):
    with pytest.raises(NlcError) as e:
        _lower(tmp_path, shape, item)
    assert message in e.value.message and hint in (e.value.hint or "")
