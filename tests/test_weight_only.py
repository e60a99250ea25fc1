"""4-bit weight-only quantization: the `quant_linear`, `quant_attention` and `quant_embedding`
ops and their layers, the `nf4` and `int4` passes (the generated model is exactly the dense
model with dequantized weights, within the error bound of its group absmaxes; a head tied to a
4-bit table shares its codes), QLoRA over a 4-bit base, and the ONNX 4-bit kernels."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from strategies import any_specs
from test_passes import _inputs, _interface, _load, _package, _seeded

from nlc.analysis.compare import weight_bytes
from nlc.analysis.cost import analyze
from nlc.api import load, write_build
from nlc.errors import NlcError
from nlc.ops.quantized import ERROR_PER_ABSMAX, NF4_LEVELS, dequantize, pack, quantize, unpack
from nlc.passes import run_passes
from nlc.targets import load_target

FORMATS = ("nf4", "int4")
EXAMPLES = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _mlp(name: str, tokens: bool = True) -> dict:
    """Linear layers of 64 and 128 inputs (one without bias), and a small head."""
    return {
        "nlc": 1,
        "name": name,
        "inputs": {"x": {"shape": ["B", "T", 64] if tokens else ["B", 64]}},
        "graph": [
            {"op": "linear", "name": "fc1", "out": 128},
            "relu",
            {"op": "linear", "name": "fc2", "out": 64, "bias": False},
            "relu",
            {"op": "linear", "name": "head", "out": 6},
        ],
    }


PREFIXES = {"quant_linear": ("",), "quant_embedding": ("",), "quant_attention": ("qkv.", "out.")}
TINY_GPT = {"vocab": 96, "context": 16, "dim": 64, "heads": 4, "layers": 2, "dropout": 0.0}


def _with_dequantized(dense_state: dict, weights: dict, graph, fmt: str) -> dict:
    """The dense state with every 4-bit weight replaced by what its codes stand for."""
    state = dict(dense_state)
    for node in graph:
        for prefix in PREFIXES.get(node.op, ()):
            q, s = weights[f"{node.name}.{prefix}qweight"], weights[f"{node.name}.{prefix}scales"]
            state[f"{node.name}.{prefix}weight"] = dequantize(q, s, fmt)
    return state


def _elementwise_bound(weight: torch.Tensor, fmt: str, group_size: int) -> torch.Tensor:
    """|w - dequantized w| allowed per weight: half the widest level gap times its group's
    absmax (the scale is the absmax rounded up to fp16)."""
    groups = weight.double().unflatten(1, (-1, group_size))
    absmax = groups.abs().amax(-1, keepdim=True).expand_as(groups).flatten(1)
    return ERROR_PER_ABSMAX[fmt] * absmax * (1 + 2**-9) + 2**-25


def _even(graph) -> dict:
    """Options that quantize every linear, attention and embedding layer whose weights have an
    even number of input features (two codes a byte: an odd number is an error, tested below)."""
    even = [
        n.name
        for n in graph
        if n.op in ("linear", "attention", "embedding")
        and all(p.shape[1] % 2 == 0 for k, p in n.params.items() if k.endswith("weight"))
    ]
    return {"group_size": 2, "min_size": 0, "select": even}  # [] selects nothing


@given(arrays("uint8", st.tuples(st.integers(1, 5), st.integers(1, 6).map(lambda n: 2 * n))))
def test_pack_unpack_round_trip(codes):
    codes = torch.from_numpy(codes % 16)
    packed = pack(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (codes.shape[0], codes.shape[1] // 2)
    assert torch.equal(unpack(packed), codes)
    assert torch.equal(packed & 15, codes[:, 0::2])  # the even input in the low nibble


@settings(max_examples=30)
@given(
    st.sampled_from(FORMATS),
    st.sampled_from([2, 8, 32]),
    st.floats(1e-3, 1e3),
    st.integers(0, 2**31 - 1),
)
def test_quantization_error_is_within_the_group_bound(fmt, group_size, magnitude, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(5, 64, generator=gen) * magnitude
    weight[0, :group_size] = 0  # an all-zero group stays exactly zero
    qweight, scales = quantize(weight, fmt, group_size)
    approx = dequantize(qweight, scales, fmt)
    error = (approx.double() - weight.double()).abs()
    assert (error <= _elementwise_bound(weight, fmt, group_size)).all()
    assert not approx[0, :group_size].any()
    # The group absmax itself is a level: exact up to the fp16 scale's rounding.
    top = weight.abs().amax(1)
    assert torch.allclose(approx.abs().amax(1), top, rtol=2**-10)
    # Outputs: |x (W - Q)^T| <= |x| bound^T on any input.
    x = torch.randn(7, 64, generator=gen, dtype=torch.float64)
    out_error = (x @ (approx.double() - weight.double()).T).abs()
    assert (out_error <= x.abs() @ _elementwise_bound(weight, fmt, group_size).T + 1e-9).all()


def test_nf4_levels_are_onnxruntimes():
    """The NF4 table and nibble order agree with onnxruntime's bnb4 quantizer."""
    import numpy as np
    from onnxruntime.capi._pybind_state import quantize_matmul_bnb4

    weight = torch.tensor(NF4_LEVELS).repeat(2, 4)  # [2, 64]: every level, absmax 1
    packed = np.zeros(weight.numel() // 2, np.uint8)
    absmax = np.zeros(weight.numel() // 32, np.float32)
    quantize_matmul_bnb4(packed, weight.numpy().copy(), absmax, 32, 1, 2, 64)  # N, K
    qweight, scales = quantize(weight, "nf4", 32)
    assert torch.equal(dequantize(qweight, scales, "nf4"), weight)
    swapped = (qweight << 4) | (qweight >> 4)  # bnb4 keeps the even input in the high nibble
    assert np.array_equal(swapped.flatten().numpy(), packed)
    assert np.array_equal(scales.float().flatten().numpy(), absmax)


@EXAMPLES
@given(any_specs, st.sampled_from(FORMATS))
def test_weight_aware_model_is_the_dequantized_dense_model(builder, case, fmt):
    spec, graph = _load(builder, case.spec)
    dense = _seeded(_package(builder, graph, spec))
    new, weights, report = run_passes(graph, dense.state_dict(), [(fmt, _even(graph))])
    assert _interface(new) == _interface(graph)
    model = _package(builder, new, spec).Model().eval()
    model.load_state_dict(weights)
    assert sum(p.numel() for p in model.parameters()) == new.num_params()
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    assert stored == sum(map(weight_bytes, new))
    reference = _package(builder, graph, spec).Model().eval()
    reference.load_state_dict(_with_dequantized(dense.state_dict(), weights, new, fmt))
    inputs = _inputs(case, graph)
    with torch.no_grad():
        got, want = model(*inputs), reference(*inputs)
    for a, b in zip(*((t if isinstance(t, tuple) else (t,)) for t in (got, want)), strict=True):
        assert torch.equal(a, b)
    for row in report:
        if "weight_bytes" in row:  # not skipped, nor a head tied to a 4-bit table
            assert row["max_weight_error"] <= row["weight_error_bound"]
            assert row["weight_bytes_after"] < row["weight_bytes"]


@EXAMPLES
@given(any_specs, st.sampled_from(FORMATS))
def test_structural_pass_builds_with_its_parameter_count(builder, case, fmt):
    spec, graph = _load(builder, case.spec)
    new, weights, _ = run_passes(graph, None, [(fmt, _even(graph))])
    assert weights is None and _interface(new) == _interface(graph)
    model = _package(builder, new, spec).Model().eval()
    assert sum(p.numel() for p in model.parameters()) == new.num_params()
    buffers = {k for k, _ in model.named_buffers()}
    state = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in buffers}
    assert state == {k: p.shape for k, p in new.parameters()}
    with torch.no_grad():
        model(*_inputs(case, new))


@pytest.fixture(scope="module")
def mlp(builder):
    """(spec, graph, seeded dense model) of the MLP."""
    spec, graph = _load(builder, _mlp("wo_mlp"))
    return spec, graph, _seeded(_package(builder, graph, spec))


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_bytes_and_cost_model_see_the_packed_storage(mlp, fmt):
    _, graph, dense = mlp
    new, _, report = run_passes(graph, dense.state_dict(), [(fmt, {"group_size": 32})])
    rows = {r["node"]: r for r in report}
    assert rows["head"]["skipped"] == "384 weights, fewer than min_size 4096"
    fc1 = rows["fc1"]  # 128 x 64: 4 bits a weight, an fp16 scale per 32, fp32 bias
    assert fc1["weight_bytes"] == 4 * (128 * 64 + 128)
    assert fc1["weight_bytes_after"] == 128 * 64 // 2 + 2 * 128 * 2 + 4 * 128
    assert 0 < fc1["output_rel_error"] < 0.2
    cost = {n.name: n for n in analyze(new, load_target("cpu"), {"B": 1, "T": 1}).nodes}
    assert cost["fc1"].weight_bytes == fc1["weight_bytes_after"]
    assert cost["fc1"].macs == 128 * 64


def test_generated_layer_quantizes_as_the_pass_does(builder, mlp):
    spec, graph, dense = mlp
    new, weights, _ = run_passes(graph, dense.state_dict(), [("int4", {"min_size": 0})])
    model = _package(builder, new, spec).Model()
    layer = model.fc2
    layer.quantize_(dense.fc2.weight)
    assert torch.equal(layer.qweight, weights["fc2.qweight"])
    assert torch.equal(layer.scales, weights["fc2.scales"])
    assert torch.equal(layer.dequantized(), dequantize(layer.qweight, layer.scales, "int4"))
    assert set(model.state_dict()) == set(weights)  # the level table is not state
    assert not any(p.requires_grad for p in layer.parameters())


def test_group_size_must_divide_the_input_features(mlp):
    _, graph, _ = mlp
    with pytest.raises(NlcError, match="fc2: group_size 48 does not divide its 128 input") as e:
        run_passes(graph, None, [("nf4", {"group_size": 48, "select": "fc2"})])
    assert "select" in e.value.hint
    with pytest.raises(NlcError, match="group_size"):
        run_passes(graph, None, [("nf4", {"group_size": 3})])  # two codes a byte: even


def test_selector_matching_nothing_is_an_error(mlp):
    _, graph, dense = mlp
    with pytest.raises(NlcError, match="select 'x.*' matches no node"):
        run_passes(graph, dense.state_dict(), [("nf4", {"select": "x.*"})])


def test_composes_after_svd(builder, mlp):
    spec, graph, dense = mlp
    steps = [("svd", {"rank": 1.0, "select": "fc1"}), ("nf4", {"min_size": 0, "group_size": 16})]
    new, weights, report = run_passes(graph, dense.state_dict(), steps)
    assert [new.nodes[n].op for n in ("fc1", "fc2", "head")] == [
        "lowrank_linear",
        "quant_linear",
        "quant_linear",
    ]
    model = _package(builder, new, spec).Model().eval()
    model.load_state_dict(weights)
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        error = (model(x) - dense(x)).abs().max() / dense(x).abs().max()
    assert 0 < error < 0.25


def test_qlora_adapts_a_frozen_4bit_base_and_merges_exactly(builder, mlp):
    spec, graph, dense = mlp
    steps = [("nf4", {"min_size": 0, "group_size": 16}), ("lora", {"rank": 4, "alpha": 8})]
    quant, qweights, _ = run_passes(graph, dense.state_dict(), steps[:1])
    new, weights, report = run_passes(quant, qweights, steps[1:])
    assert {new.nodes[n].op for n in ("fc1", "fc2", "head")} == {"qlora_linear"}
    base = _package(builder, quant, spec).Model().double().eval()
    base.load_state_dict(qweights)
    adapted = _package(builder, new, spec).Model().double().eval()
    adapted.load_state_dict(weights)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == 4 * (64 + 128) + 4 * (128 + 64) + 4 * (64 + 6)
    assert report[0]["trainable_fraction"] == trainable / new.num_params()
    x = torch.randn(2, 3, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(adapted(x), base(x))  # a fresh adapter is the base layer
        for name in ("fc1", "fc2", "head"):  # as if trained
            getattr(adapted, name).lora_B.normal_()
    trained = {
        k: v.float() if v.is_floating_point() else v for k, v in adapted.state_dict().items()
    }
    merged, out, _ = run_passes(new, trained, [("lora_merge", {})])
    assert {merged.nodes[n].op for n in ("fc1", "fc2", "head")} == {"linear"}
    for name in ("fc1", "fc2", "head"):
        a, b = trained[f"{name}.lora_A"].double(), trained[f"{name}.lora_B"].double()
        q, s = trained[f"{name}.qweight"], trained[f"{name}.scales"]
        expected = dequantize(q, s, "nf4").double() + (b @ a) * 2.0
        assert torch.equal(out[f"{name}.weight"], expected.float())
    dense_model = _package(builder, merged, spec).Model().double().eval()
    dense_model.load_state_dict(out)
    with torch.no_grad():
        want, got = adapted(x), dense_model(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize(("fmt", "tokens"), [("nf4", True), ("int4", False)])
def test_onnx_runs_4bit_kernels_and_verifies(builder, tmp_path, fmt, tokens):
    spec, graph = _load(builder, _mlp(f"wo_onnx_{fmt}", tokens))
    dense = _seeded(_package(builder, graph, spec))
    steps = [(fmt, {"min_size": 0, "group_size": 32})]
    new, weights, _ = run_passes(graph, dense.state_dict(), steps)
    write_build(spec, new, tmp_path / "build", weights=weights)  # rewrites model.onnx
    report = json.loads((tmp_path / "build" / "onnx.json").read_text())["four_bit"]
    kernel = {"nf4": "MatMulBnb4", "int4": "MatMulNBits"}[fmt]
    assert report["layers"] == {n: kernel for n in ("fc1", "fc2", "head")}
    model = onnx.load(str(tmp_path / "build" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(kernel) == 3 and "MatMul" not in ops and "Gemm" not in ops
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert max(onnx.numpy_helper.to_array(t).size for t in floats) <= 256  # biases, scales
    for check in report["checks"]:  # the same dequantized weights: float rounding only
        for out in check["outputs"].values():
            assert out["max_abs_error"] <= 1e-5 * out["scale"]
    assert report["bytes"] < report["bytes_exported"] / 3  # small layers: folded to fp32


# -- attention, embeddings and tied heads -------------------------------------------------------


@pytest.fixture(scope="module")
def gpt(builder):
    """(spec, graph, seeded dense model) of a tiny GPT-2 (the zoo's, LM head tied to wte)."""
    spec, graph = load("examples/gpt2_small.yaml", TINY_GPT)
    return spec, graph, _seeded(_package(builder, graph, spec))


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt_attention_embedding_and_tied_head_are_4bit_and_exact(builder, gpt, fmt):
    spec, graph, dense = gpt
    new, weights, report = run_passes(graph, dense.state_dict(), [(fmt, {"group_size": 32})])
    ops = {n.name: n.op for n in new}
    assert ops["wte"] == "quant_embedding" and ops["lm_head"] == "quant_linear"
    assert ops["h.0.attn"] == ops["h.1.attn"] == "quant_attention"
    assert ops["wpe"] == "pos_embedding"  # position tables stay dense
    # The tie stays a tie: one table in the weights, shared by the generated layers.
    assert "wte.weight" not in weights and "lm_head.weight" not in weights
    assert weights["lm_head.qweight"] is weights["wte.qweight"]
    model = _package(builder, new, spec).Model().eval()
    model.load_state_dict(weights)
    assert model.lm_head.qweight is model.wte.qweight and model.lm_head.scales is model.wte.scales
    for name in ("wte", "h.1.attn.out"):  # the layers quantize as the pass does
        layer = model.get_submodule(name)
        layer.quantize_(dense.get_submodule(name).weight)
        assert torch.equal(layer.qweight, weights[f"{name}.qweight"])
        assert torch.equal(layer.scales, weights[f"{name}.scales"])
    stored = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: once
    assert stored == sum(map(weight_bytes, new))
    fp32 = sum(p.numel() * 4 for p in dense.parameters())
    assert fp32 / stored > 4  # 64-wide layers: the fp32 norms, biases and wpe weigh more here
    attn = next(r for r in report if r["node"] == "h.0.attn")
    qkv, out = 192 * 64, 64 * 64  # weights: 4 bits each, an fp16 scale per 32, fp32 biases
    assert attn["weight_bytes_after"] == (qkv + out) // 2 + (qkv + out) // 32 * 2 + 4 * (192 + 64)
    cost = {n.name: n for n in analyze(new, load_target("cpu"), {"B": 1, "T": 8}).nodes}
    assert cost["h.0.attn"].weight_bytes == attn["weight_bytes_after"]
    assert cost["wte"].weight_bytes == 8 * (64 // 2 + 2 * 64 // 32)  # the 8 gathered rows
    reference = _package(builder, graph, spec).Model().eval()
    reference.load_state_dict(_with_dequantized(dense.state_dict(), weights, new, fmt))
    ids = torch.randint(0, TINY_GPT["vocab"], (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(ids), reference(ids)
        assert torch.equal(got, want)
        # 4 bits through 2 layers of a random init (small logits): near, not equal.
        assert 0 < torch.linalg.norm(got - dense(ids)) < 0.5 * torch.linalg.norm(dense(ids))
    for row in report:
        if "weight_bytes" in row:
            assert row["max_weight_error"] <= row["weight_error_bound"]


def test_embeddings_false_keeps_the_table_and_its_tied_head_dense(gpt):
    _, graph, dense = gpt
    new, weights, report = run_passes(graph, dense.state_dict(), [("nf4", {"embeddings": False})])
    ops = {n.name: n.op for n in new}
    assert ops["wte"] == "embedding" and ops["lm_head"] == "linear"
    assert new.nodes["lm_head"].params["weight"].tied_to == "wte.weight"
    assert torch.equal(weights["wte.weight"], dense.state_dict()["wte.weight"])
    assert ops["h.0.attn"] == "quant_attention"
    rows = {r["node"]: r for r in report}
    assert rows["lm_head"]["skipped"] == "its weight is tied to 'wte'"


def test_a_table_under_min_size_stays_dense_with_its_tied_head(gpt):
    _, graph, _ = gpt
    new, _, report = run_passes(graph, None, [("int4", {"min_size": 96 * 64 + 1})])
    assert {n.name: n.op for n in new}["lm_head"] == "linear"
    rows = {r["node"]: r for r in report}
    assert rows["wte"]["skipped"] == f"{96 * 64} weights, fewer than min_size {96 * 64 + 1}"
    assert rows["h.0.attn"]["op_after"] == "quant_attention"  # 16384 weights


def test_attention_group_size_must_divide_both_projections(gpt):
    _, graph, _ = gpt
    with pytest.raises(NlcError, match="h.0.attn: group_size 48 does not divide its 64 input"):
        run_passes(graph, None, [("nf4", {"group_size": 48, "select": "h.0.attn"})])


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt_onnx_runs_4bit_matmuls_and_lookup_and_verifies(builder, gpt, tmp_path, fmt):
    spec, graph, dense = gpt
    new, weights, _ = run_passes(graph, dense.state_dict(), [(fmt, {"group_size": 32})])
    write_build(spec, new, tmp_path / "build", weights=weights)
    report = json.loads((tmp_path / "build" / "onnx.json").read_text())["four_bit"]
    kernel = {"nf4": "MatMulBnb4", "int4": "MatMulNBits"}[fmt]
    matmuls = ["h.0.attn.qkv", "h.0.attn.out", "h.0.fc", "h.0.proj"]
    matmuls += [m.replace("h.0", "h.1") for m in matmuls] + ["lm_head"]
    lookup = "GatherBlockQuantized" if fmt == "int4" else "dequantizing Gather (no NF4 kernel)"
    assert report["layers"] == {"wte": lookup, **dict.fromkeys(matmuls, kernel)}
    model = onnx.load(str(tmp_path / "build" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(kernel) == len(matmuls)
    assert ops.count("MatMul") == 4  # the attention scores and their weighted sum, 2 layers
    assert ops.count("GatherBlockQuantized") == (fmt == "int4")
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert max(onnx.numpy_helper.to_array(t).size for t in floats) <= 16 * 64  # wpe the largest
    for check in report["checks"]:
        for out in check["outputs"].values():
            assert out["max_abs_error"] <= 1e-5 * out["scale"]
    assert report["bytes"] < report["bytes_exported"] / 5
