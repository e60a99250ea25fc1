"""LoRA: the `lora_linear` op and its layer, the `lora` pass (a fresh adapter is an identity,
only adapters train) and `lora_merge` (folding the update back is exact), LoRA+ by groups."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from test_passes import _load, _package
from torch.utils.flop_counter import FlopCounterMode

from nlc.analysis.counts import node_counts
from nlc.emit.onnx import export_onnx
from nlc.errors import NlcError
from nlc.ir.printer import format_graph
from nlc.passes import run_passes


def _mlp(name: str, width: int = 24, features: int = 12, tokens: bool = True) -> dict:
    """Three linear layers (one without bias), over [B, T, features] or [B, features]."""
    return {
        "nlc": 1,
        "name": name,
        "inputs": {"x": {"shape": ["B", "T", features] if tokens else ["B", features]}},
        "graph": [
            {"op": "linear", "name": "fc1", "out": width},
            "relu",
            {"op": "linear", "name": "fc2", "out": width, "bias": False},
            "relu",
            {"op": "linear", "name": "head", "out": 5},
        ],
    }


LINEARS = ("fc1", "fc2", "head")


@pytest.fixture(scope="module")
def dense(builder):
    """(spec, graph, seeded dense model, an input)."""
    spec, graph = _load(builder, _mlp("lora_mlp"))
    torch.manual_seed(0)
    model = _package(builder, graph, spec).Model().double().eval()
    return spec, graph, model, torch.randn(3, 4, 12, dtype=torch.float64)


def _adapted(builder, dense, steps, weights=None):
    """The model after `steps` with the weights they give (from the dense model's)."""
    spec, graph, model, _ = dense
    state = model.state_dict() if weights is None else weights
    new, out, report = run_passes(graph, state, steps)
    adapted = _package(builder, new, spec).Model().double().eval()
    adapted.load_state_dict(out)
    return new, out, report, adapted


def test_fresh_adapters_are_an_identity(builder, dense):
    _, graph, model, x = dense
    new, weights, report, adapted = _adapted(builder, dense, [("lora", {"rank": 4})])
    assert [new.nodes[n].op for n in LINEARS] == ["lora_linear"] * 3
    base = set(model.state_dict())
    assert set(weights) == base | {f"{n}.lora_{k}" for n in LINEARS for k in "AB"}
    assert set(adapted.state_dict()) == set(weights)
    for name in base:  # the base weights travel unchanged
        assert weights[name] is model.state_dict()[name] or torch.equal(
            weights[name], model.state_dict()[name]
        )
    assert all(weights[f"{n}.lora_B"].abs().sum() == 0 for n in LINEARS)
    assert all(weights[f"{n}.lora_A"].abs().sum() > 0 for n in LINEARS)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), model(x), rtol=0, atol=0)
    again = run_passes(graph, model.state_dict(), [("lora", {"rank": 4})])[1]
    assert all(torch.equal(again[k], v) for k, v in weights.items())  # seeded by node name
    fc1 = next(r for r in report if r["node"] == "fc1")
    assert fc1["trainable"] == 4 * (12 + 24)


def test_merge_is_exact_and_round_trips(builder, dense):
    _, graph, _, x = dense
    steps = [("lora", {"rank": 4, "alpha": 8, "dropout": 0.1})]
    lora_graph, weights, _, adapted = _adapted(builder, dense, steps)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.normal_()
    trained = adapted.state_dict()
    new, merged_weights, _ = run_passes(lora_graph, trained, [("lora_merge", {})])
    assert format_graph(new) == format_graph(graph)
    merged = _package(builder, new, dense[0]).Model().double().eval()
    merged.load_state_dict(merged_weights)
    with torch.no_grad():
        want, got = adapted(x), merged(x)
        change = (want - dense[2](x)).abs().max()
    assert change > 1e-2  # the adapters do something
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


def test_structural_round_trip_and_macs(builder, dense):
    spec, graph, _, _ = dense
    new, weights, _ = run_passes(graph, None, [("lora", {"rank": 3}), ("lora_merge", {})])
    assert weights is None and format_graph(new) == format_graph(graph)
    lora_graph = run_passes(graph, None, [("lora", {"rank": 3, "select": "fc*"})])[0]
    assert lora_graph.nodes["head"].op == "linear"
    model = _package(builder, lora_graph, spec).Model().eval()
    x = torch.randn(2, 3, 12)
    macs = sum(c.macs for c in node_counts(lora_graph, {"B": 2, "T": 3}))
    with FlopCounterMode(display=False) as flops:
        model(x)
    assert flops.get_total_flops() == 2 * macs


def test_only_adapters_train(builder):
    spec, graph = _load(builder, _mlp("lora_wide", width=512, features=512))
    new, _, report = run_passes(graph, None, [("lora", {"rank": 4})])
    model = _package(builder, new, spec).Model()
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{k}" for n in LINEARS for k in "AB"}
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert count / total < 0.02
    assert report[-1]["trainable_fraction"] == pytest.approx(count / total)
    model(torch.randn(2, 3, 512)).sum().backward()
    assert {k for k, p in model.named_parameters() if p.grad is not None} == trainable


def test_lora_plus_gives_b_its_own_learning_rate(builder):
    doc = {
        **_mlp("lora_plus", tokens=False),
        "passes": [{"pass": "lora", "rank": 4}],
        "train": {
            "loss": {"kind": "cross_entropy"},
            "epochs": 1,
            "optimizer": {"lr": 1e-3, "groups": [{"params": "*.lora_B", "lr_scale": 16}]},
        },
    }
    built = builder.build(doc)
    sys.path.insert(0, str(built.root))
    try:
        train = importlib.import_module(f"{built.name}.train")
    finally:
        sys.path.remove(str(built.root))
    model = train.Model()
    opt = train.namespace(train.CONFIG["optimizer"])
    groups = train.parameter_groups(model, opt, lambda _: None)
    ids = {id(p): k for k, p in model.named_parameters()}
    fast = [g for g in groups if g["lr"] == pytest.approx(16e-3)]
    assert len(fast) == 1
    assert {ids[id(p)] for p in fast[0]["params"]} == {f"{n}.lora_B" for n in LINEARS}


def test_onnx_export_verifies(builder):
    built = builder.build({**_mlp("lora_onnx"), "passes": [{"pass": "lora", "rank": 2}]})
    assert built.graph.nodes["fc1"].op == "lora_linear"
    assert export_onnx(built.root, built.graph)["verified"]


def test_errors(builder, dense):
    _, graph, model, _ = dense
    with pytest.raises(NlcError, match="option 'rank'"):
        run_passes(graph, None, [("lora", {"rank": 0})])
    with pytest.raises(NlcError, match="has no option"):
        run_passes(graph, None, [("lora_merge", {"rank": 2})])
    lora_graph = run_passes(graph, None, [("lora", {"rank": 2})])[0]
    with pytest.raises(NlcError, match="no 'fc1.lora_A'"):
        run_passes(lora_graph, model.state_dict(), [("lora_merge", {})])


def test_tied_linears_are_skipped(builder):
    doc = {
        "nlc": 1,
        "name": "lora_tied",
        "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
        "graph": [
            {"op": "embedding", "name": "wte", "num": 16, "dim": 8},
            {"op": "linear", "name": "mix", "out": 8},
            {"op": "linear", "name": "head", "out": 16, "tie": "wte", "bias": False},
        ],
    }
    _, graph = _load(builder, doc)
    new, _, report = run_passes(graph, None, [("lora", {"rank": 2})])
    assert new.nodes["head"].op == "linear" and new.nodes["mix"].op == "lora_linear"
    assert "tied" in next(r for r in report if r["node"] == "head")["skipped"]
