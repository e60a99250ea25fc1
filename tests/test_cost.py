"""The cost model: published MAC counts, agreement with torch's FLOP counter, monotonicity,
roofline sanity, memory and the largest batch, and the report renderers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import Case, any_specs
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import nlc
from nlc.analysis.cost import analyze, node_time
from nlc.analysis.memory import inference_memory, kept_for_backward, training_memory
from nlc.analysis.plan import Plan, byte_size, evaluator
from nlc.analysis.report import plot_latency, render_report
from nlc.errors import NlcError
from nlc.ir.types import sym
from nlc.targets import Target, load_target

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RX580 = load_target("rx580")


# Published multiply-accumulates per 224x224 image (torchvision's model tables, ViT paper).
@pytest.mark.parametrize(
    ("name", "gmacs"),
    [("resnet18", 1.81), ("resnet50", 4.09), ("mobilenet_v2", 0.30), ("vit_b16", 17.56)],
)
def test_macs_match_published_tables(name, gmacs):
    _, graph = nlc.load(EXAMPLES / f"{name}.yaml")
    assert analyze(graph, RX580).macs / 1e9 == pytest.approx(gmacs, rel=0.02)


# -- agreement with torch.utils.flop_counter ----------------------------------------------------


def _inputs(case: Case, graph) -> list[torch.Tensor]:
    subs = {sym(k): v for k, v in case.dims.items()}
    out = []
    for node in graph.inputs:
        shape = [int(d if isinstance(d, int) else d.subs(subs)) for d in node.type.shape]
        bound = case.id_bounds.get(node.name)
        out.append(torch.randint(0, bound, shape) if bound else torch.randn(shape))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_specs)
def test_macs_are_half_the_flops_torch_counts(builder, case: Case):
    built = builder.build(case.spec)
    model = built.load().Model().eval()
    # The math backend runs attention as matmuls, which the counter sees (the fused CPU
    # kernel has no FLOP formula).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(*_inputs(case, built.graph))
    assert analyze(built.graph, RX580, case.dims).macs == fc.get_total_flops() // 2


# -- monotonicity ---------------------------------------------------------------------------------
# Specs with knobs in `params:` (width, layers); the batch and sequence are symbolic dims.


def _mlp(draw) -> dict[str, Any]:
    layer = [{"op": "linear", "name": "fc", "out": "${width}", "bias": draw(st.booleans())}]
    layer += [draw(st.sampled_from(["relu", "gelu", "silu", "tanh"]))]
    if draw(st.booleans()):
        layer.append({"op": draw(st.sampled_from(["layernorm", "rmsnorm"])), "name": "norm"})
    return {
        "inputs": {"x": {"shape": ["B", 12]}},
        "blocks": {"layer": {"params": {"width": "int"}, "graph": layer}},
        "graph": [
            {"op": "layer", "name": "body", "width": "${width}", "repeat": "${layers}"},
            {"op": "linear", "name": "head", "out": 5},
        ],
    }


def _cnn(draw) -> dict[str, Any]:
    act = draw(st.sampled_from(["relu", "relu6", "hardswish"]))
    block = [
        {"op": "conv2d", "name": "conv", "out": "${width}", "kernel": 3, "padding": 1},
        {"op": "batchnorm2d", "name": "bn"},
        act,
    ]
    if draw(st.booleans()):  # a residual connection
        block += [{"op": "add", "in": ["x", act]}]
    if draw(st.booleans()):
        block.insert(1, {"op": "conv2d", "name": "dw", "out": "${width}", "kernel": 3,
                         "padding": 1, "groups": "${width}"})  # fmt: skip
    graph = [
        {"op": "conv2d", "name": "stem", "out": "${width}", "kernel": 3, "padding": 1},
        {"op": "block", "name": "body", "width": "${width}", "repeat": "${layers}"},
    ]
    if draw(st.booleans()):
        graph.append({"op": "maxpool2d", "kernel": 2})
    graph += ["global_avgpool", {"op": "linear", "name": "head", "out": 10}]
    return {
        "inputs": {"x": {"shape": ["B", 3, 12, 12]}},
        "blocks": {"block": {"params": {"width": "int"}, "graph": block}},
        "graph": graph,
    }


def _transformer(draw) -> dict[str, Any]:
    attn = {"op": "attention", "name": "attn", "heads": 2, "causal": draw(st.booleans())}
    if draw(st.booleans()):
        attn |= {"kv_heads": 1}
    if draw(st.booleans()):
        attn |= {"rope": True}
    if draw(st.booleans()):
        mlp = [{"op": "gated_mlp", "name": "mlp", "hidden": "${2 * width}"}]
    else:
        mlp = [
            {"op": "linear", "name": "fc", "out": "${2 * width}"},
            {"op": "gelu", "approximate": "tanh"},
            {"op": "linear", "name": "proj", "out": "${width}"},
        ]
    layer = [
        {"op": "layernorm", "name": "ln1"},
        attn,
        {"op": "add", "name": "res", "in": ["x", "attn"]},
        {"op": "layernorm", "name": "ln2"},
        *mlp,
        {"op": "add", "in": ["res", mlp[-1].get("name", "proj")]},
    ]
    return {
        "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
        "blocks": {"layer": {"params": {"width": "int"}, "graph": layer}},
        "graph": [
            {"op": "embedding", "name": "emb", "num": 40, "dim": "${width}"},
            {"op": "pos_embedding", "name": "pos", "num": 64},
            {"op": "layer", "name": "body", "width": "${width}", "repeat": "${layers}"},
            {"op": "layernorm", "name": "ln_f"},
            {"op": "linear", "name": "head", "out": 40, "bias": False, "tie": "emb"},
        ],
    }


FAMILIES = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer}


def _figures(path: Path, params: dict, dims: dict, dtype: str | None, target: Target):
    """Every figure that must not decrease when the model or its input grows."""
    _, graph = nlc.load(path, params)
    cost = analyze(graph, target, dims, dtype)
    mixed = cost.precisions[-1]
    return {
        "MACs": cost.macs,
        "FLOPs": cost.flops,
        "bytes": sum(n.weight_bytes + n.read_bytes + n.written_bytes for n in cost.nodes),
        "DRAM bytes": sum(n.dram_bytes for n in cost.nodes),
        "latency": cost.latency,
        "inference memory": mixed.inference.total,
        "training memory": mixed.training.total,
        "minus the largest batch": -mixed.max_batch_training,
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    data=st.data(),
    knob=st.sampled_from(["width", "layers", "B", "T"]),
    width=st.integers(1, 8).map(lambda n: 4 * n),  # a multiple of 2 heads x even head_dim
    layers=st.integers(1, 3),
    batch=st.integers(1, 4),
    seq=st.integers(1, 16),
    step=st.integers(1, 3),
    dtype=st.sampled_from([None, "f16"]),
)
def test_cost_never_drops_when_a_knob_grows(
    tmp_path_factory, family, data, knob, width, layers, batch, seq, step, dtype
):
    assume(knob != "T" or family == "transformer")
    doc = {"nlc": 1, "name": family, "params": {"width": width, "layers": layers}}
    doc |= data.draw(st.composite(FAMILIES[family])())
    path = tmp_path_factory.mktemp(family) / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    params, dims = {"width": width, "layers": layers}, {"B": batch}
    if family == "transformer":
        dims["T"] = seq
    # A cache one byte larger than one of the tensors, which no longer fits once it grows.
    _, graph = nlc.load(path, params)
    size, at = byte_size(dtype), evaluator(dims)
    cache = 1 + data.draw(st.sampled_from(sorted({at(size(n.type)) for n in graph})))
    target = RX580.model_copy(update={"cache_mib": cache / 2**20})
    before = _figures(path, params, dims, dtype, target)
    if knob in params:
        params[knob] += 4 * step if knob == "width" else step
    elif knob in dims:
        dims[knob] += step
    after = _figures(path, params, dims, dtype, target)
    for figure, value in before.items():
        assert after[figure] >= value, f"{figure} dropped when {knob} grew"


# -- roofline, memory, largest batch -------------------------------------------------------------


def _graph(tmp_path: Path, inputs: dict, graph: list) -> Any:
    path = tmp_path / "spec.yaml"
    doc = {"nlc": 1, "name": "probe", "inputs": inputs, "graph": graph}
    path.write_text(yaml.safe_dump(doc))
    return nlc.load(path)[1]


def test_big_matmul_is_compute_bound_and_elementwise_memory_bound(tmp_path):
    graph = _graph(
        tmp_path,
        {"x": {"shape": ["B", 4096]}},
        [{"op": "linear", "name": "fc", "out": 4096}, "relu", "flatten"],
    )
    nodes = analyze(graph, RX580, {"B": 4096}).nodes
    for n in nodes:  # the recorded figures are all a calibration needs to re-time a node
        assert n.time == node_time(
            RX580, n.dtype, n.op_class, n.work, n.dram_bytes, n.cached_bytes, n.launches
        )
    fc, relu, flatten = nodes
    assert fc.time.bound == "compute" and fc.op_class == "matmul"
    assert fc.macs == 4096**3 and fc.intensity > 100
    assert fc.time.compute == pytest.approx(2 * 4096**3 / (6.175e12 * 0.6))
    assert relu.time.bound == "memory" and relu.intensity < 1
    # Reads and writes 64 MiB each; its input, the linear's output, is larger than the cache.
    assert relu.time.memory == pytest.approx(2 * 4096**2 * 4 / (256e9 * 0.75))
    assert flatten.time.total == 0 and flatten.time.bound == "none"
    # At batch 1 the same layers are dominated by launch overhead.
    assert [n.time.bound for n in analyze(graph, RX580, {"B": 1}).nodes[1:]] == [
        "overhead",
        "none",
    ]


def test_the_cache_serves_small_models_and_fresh_inputs(tmp_path):
    graph = _graph(tmp_path, {"x": {"shape": ["B", 1024]}}, ["relu", "sigmoid"])
    small, fresh, big = (analyze(graph, RX580, {"B": b}).nodes[1] for b in (1, 384, 4096))
    # Everything fits in the 2 MiB L2: it serves the reads and the writes.
    assert small.cached_bytes == small.read_bytes + small.written_bytes == 8192
    assert small.dram_bytes == 0
    # 1.5 MiB tensors: two do not fit, but the input the relu just wrote does.
    assert fresh.cached_bytes == fresh.read_bytes == 384 * 4096
    assert big.cached_bytes == 0  # 16 MiB does not fit
    # 1 MiB of weights: read from the cache between passes only while everything fits.
    graph = _graph(
        tmp_path, {"x": {"shape": ["B", 512]}}, [{"op": "linear", "out": 512, "bias": False}]
    )
    resident, evicted = (analyze(graph, RX580, {"B": b}).nodes[0] for b in (1, 1024))
    assert resident.cached_bytes == resident.weight_bytes + 2 * 512 * 4
    assert evicted.cached_bytes == 0


def test_cache_bandwidth_overlap_and_overheads(tmp_path):
    graph = _graph(tmp_path, {"x": {"shape": ["B", 1024]}}, ["relu", "sigmoid"])
    cpu = RX580.model_copy(
        update={
            "cache_bandwidth_gbs": 1000.0,
            "memory_efficiency": 0.5,
            "overlap": 0.25,
            "call_overhead_us": 7.0,
            "node_overhead_us": {"elementwise": 2.0},
        }
    )
    cost = analyze(graph, cpu, {"B": 384})
    relu, sigmoid = cost.nodes
    assert sigmoid.time.memory == pytest.approx(
        (384 * 4096 / 1000e9 + 384 * 4096 / 256e9) / 0.5
    )  # its input from the cache, its output to memory
    assert sigmoid.time.overhead == pytest.approx((10 + 2) * 1e-6)
    shorter, longer = sorted((sigmoid.time.compute, sigmoid.time.memory))
    assert sigmoid.time.total == pytest.approx(12e-6 + longer + 0.75 * shorter)
    assert cost.latency == pytest.approx(7e-6 + relu.time.total + sigmoid.time.total)
    # Without a cache bandwidth the cache is free, and the op class's efficiency applies.
    assert analyze(graph, RX580, {"B": 384}).nodes[1].time.memory == pytest.approx(
        384 * 4096 / (256e9 * 0.75)
    )


def _conv_bn(name: str, act: str | None = None, **more) -> list:
    conv = {"op": "conv2d", "name": f"{name}_conv", "out": 8, "kernel": 3, "padding": 1}
    return [{**conv, **more}, {"op": "batchnorm2d", "name": f"{name}_bn"}, *([act] if act else [])]


def test_onnxruntime_fuses_epilogues_into_convolutions_and_gemms(tmp_path):
    graph = _graph(
        tmp_path,
        {"x": {"shape": ["B", 8, 6, 6]}},
        [
            *_conv_bn("a", "relu"),  # all fused
            *_conv_bn("b"),
            {"op": "add", "name": "sum", "in": ["relu", "b_bn"]},  # a residual: fused
            {"op": "relu6", "name": "act"},  # fused after the add
            *_conv_bn("c", "hardswish"),
            {"op": "add", "name": "late", "in": ["act", "hardswish"]},  # after an activation
            *_conv_bn("d", **{"in": "late"}),
            {"op": "add", "name": "twice", "in": ["d_bn", "d_bn"]},  # d_bn read twice
            *_conv_bn("e", **{"in": "x"}),
            {"op": "add", "name": "outside", "in": ["e_bn", "x"]},  # x comes from no conv
            {"op": "add", "name": "merge", "in": ["twice", "outside"]},
            "global_avgpool",
            {"op": "linear", "name": "fc", "out": 4},
            "relu",
            {"op": "linear", "name": "head", "out": 4},
            "gelu",  # no fused GELU after a Gemm
            {"op": "reshape", "shape": [-1, 2, 2], "name": "rows"},
            {"op": "linear", "name": "matmul", "out": 4},
            {"op": "relu", "name": "after_matmul"},  # a 3-D linear is no Gemm
        ],
    )
    ort = RX580.model_copy(update={"runtime": "onnxruntime"})
    nodes = {n.name: n for n in analyze(graph, ort, {"B": 2}).nodes}
    fused = {k for k, n in nodes.items() if n.launches == 0 and n.op != "reshape"}
    assert fused == {
        "a_bn", "relu", "b_bn", "sum", "act", "c_bn", "hardswish", "d_bn", "e_bn", "relu_1"
    }  # fmt: skip
    # The residual add reads the shortcut, and writes nothing: the conv writes the sum.
    assert nodes["sum"].read_bytes == 2 * 8 * 36 * 4 and nodes["sum"].written_bytes == 0
    assert nodes["sum"].time.overhead == 0
    eager = analyze(graph, RX580, {"B": 2}).nodes  # eager PyTorch fuses nothing
    assert all(n.launches for n in eager if n.op != "reshape")


def test_half_precision_halves_the_bytes_and_needs_support(tmp_path):
    graph = _graph(tmp_path, {"x": {"shape": ["B", 256]}}, [{"op": "linear", "out": 256}])
    f32, f16 = (analyze(graph, RX580, {"B": 8}, d).nodes[0] for d in (None, "f16"))
    assert f16.dram_bytes * 2 == f32.dram_bytes and f16.dtype == "f16"
    with pytest.raises(NlcError, match="rx580 does not support bf16"):
        analyze(graph, RX580, {"B": 8}, "bf16")
    with pytest.raises(NlcError, match="no symbolic dim 'T'"):
        analyze(graph, RX580, {"T": 8})


def test_memory_counts_weights_once_and_frees_dead_activations(tmp_path):
    graph = _graph(
        tmp_path,
        {"x": {"shape": ["B", 1000]}},
        [{"op": "linear", "name": f"fc{i}", "out": 1000, "bias": False} for i in range(4)],
    )
    plan, at = Plan(graph, None), evaluator({"B": 10})
    inference = inference_memory(plan, at)
    assert inference.weights == 4 * 1000 * 1000 * 4
    # At most an input and an output of 10 x 1000 floats are alive at once.
    assert inference.activations == 2 * 10 * 1000 * 4
    training = training_memory(plan, at)
    assert (training.gradients, training.optimizer) == (inference.weights, 2 * inference.weights)
    # Each linear keeps its input; the last output is alive at the end; plus one gradient.
    assert training.activations == (4 + 1 + 1) * 10 * 1000 * 4
    mixed = training_memory(Plan(graph, "f16"), at)
    assert mixed.weights == training.weights and mixed.weight_copies == training.weights // 2


@pytest.mark.parametrize("target", ["rtx2060", "rx580"])
def test_largest_batch_fits_and_one_more_does_not(target):
    _, graph = nlc.load(EXAMPLES / "resnet18.yaml")
    t = load_target(target)
    for p in analyze(graph, t).precisions:
        plan = Plan(graph, p.dtype)
        for fn, largest in ((inference_memory, p.max_batch_inference),
                            (training_memory, p.max_batch_training)):  # fmt: skip
            assert largest > 1
            assert fn(plan, evaluator({"B": largest})).total <= t.capacity_bytes
            assert fn(plan, evaluator({"B": largest + 1})).total > t.capacity_bytes


def test_reports_render(tmp_path):
    _, graph = nlc.load(EXAMPLES / "cnn_digits.yaml")
    costs = [analyze(graph, load_target(t), {"B": 4}) for t in ("rx580", "h100")]
    files = render_report(costs)
    data = json.loads(files["report.json"])
    assert [a["target"] for a in data["analyses"]] == ["rx580", "h100"]
    first = data["analyses"][0]
    assert first["latency_s"] == pytest.approx(sum(n["time"]["total"] for n in first["nodes"]))
    assert "## Slowest nodes on h100 (f32)" in files["report.md"]
    assert (
        "| node | op | rx580 (f32) time | rx580 (f32) bound | h100 (f32) time |"
        in files["report.md"]
    )
    pytest.importorskip("matplotlib")
    png = plot_latency(costs, tmp_path / "latency.png")
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("name", "dims"),
    [("resnet18", {"B": 2}), ("mobilenet_v2", {"B": 2}), ("llama_tiny", {"B": 2, "T": 16})],
)
def test_training_keeps_what_torch_saves_for_backward(builder, name, dims):
    built = builder.build(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))
    model = built.load().Model().train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    case = Case(built.spec.data, dims, {"ids": 100})
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*_inputs(case, built.graph))
    plan, at = Plan(built.graph, None), evaluator(dims)
    kept = kept_for_backward(plan.live, plan.train_roots)
    ours = sum(at(plan.size(built.graph.type_of(v))) for v in kept)
    ours += sum(at(c.saved) for c in plan.costs.values())
    assert ours == pytest.approx(sum(saved.values()), rel=0.03)
