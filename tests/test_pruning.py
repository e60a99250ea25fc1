"""The pruning passes: unstructured `prune` (zeros) and structured `channels` (removes channels).

The key property of `channels`: the physically pruned model computes what the dense model
computes with the removed channels zeroed (their producing rows, biases and norm affines set
to 0), on random CNNs with residual, projection, concat and depthwise blocks and on MLPs.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from strategies import Case, _cnn_blocks, _spec, any_specs, transformer_specs
from test_passes import SMALL, _inputs, _interface, _load, _package, _seeded

import nlc
from nlc.errors import NlcError
from nlc.ir.printer import format_graph
from nlc.ir.verify import verify
from nlc.passes import PASSES, run_passes
from nlc.passes.channels import ChannelsOptions
from nlc.passes.heads import HeadLayout
from nlc.passes.prune import PruneOptions

EXAMPLES = settings(max_examples=30, deadline=None)


@st.composite
def residual_cnns(draw) -> Case:
    """stem conv-bn-relu, then residual, downsampling (1x1 projection), concat and depthwise
    blocks in random order, global pooling or a flatten, an optional hidden linear, a head."""
    blocks = {k: v for k, v in _cnn_blocks("relu").items() if k in ("res", "down", "branch", "sep")}
    c = draw(st.integers(2, 8))
    graph: list = [
        {"op": "conv2d", "name": "stem", "out": c, "kernel": 3, "padding": 1},
        {"op": "batchnorm2d", "name": "stem_bn"},
        "relu",
    ]
    size = 8
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["res", "down", "branch", "sep"]))
        if kind == "res":
            graph.append({"op": "res", "name": f"res{i}", "c": c})
        elif kind == "down" and size > 2:
            c, size = draw(st.integers(2, 8)), size // 2
            graph.append({"op": "down", "name": f"down{i}", "c": c})
        elif kind == "branch":
            half = draw(st.integers(1, 4))
            graph.append({"op": "branch", "name": f"branch{i}", "c": half})
            c = 2 * half
        else:
            new = draw(st.integers(2, 8))
            graph.append({"op": "sep", "name": f"sep{i}", "cin": c, "c": new})
            c = new
    graph.append("global_avgpool" if draw(st.booleans()) else "flatten")
    if draw(st.booleans()):
        graph += [{"op": "linear", "name": "hidden", "out": draw(st.integers(2, 12))}, "relu"]
    graph.append({"op": "linear", "name": "head", "out": 5})
    spec = _spec("prunecnn", {"x": {"shape": ["B", 3, 8, 8]}}, blocks, graph)
    used = {n["op"] for n in graph if isinstance(n, dict)}
    spec["blocks"] = {k: v for k, v in blocks.items() if k in used}
    return Case(spec, {"B": 2})


@st.composite
def mlps(draw) -> Case:
    """Linear-relu stacks with batchnorm1d and residual adds between equal widths."""
    w = draw(st.integers(2, 12))
    graph: list = [{"op": "linear", "name": "fc0", "out": w}, {"op": "relu", "name": "act0"}]
    for i in range(1, draw(st.integers(2, 5))):
        last = graph[-1]["name"]
        if draw(st.booleans()):
            graph += [
                {"op": "linear", "name": f"fc{i}", "out": w},
                {"op": "batchnorm1d", "name": f"bn{i}"},
                {"op": "add", "name": f"add{i}", "in": [f"bn{i}", last]},
            ]
        else:
            w = draw(st.integers(2, 12))
            graph += [
                {"op": "linear", "name": f"fc{i}", "out": w},
                {"op": "relu", "name": f"act{i}"},
            ]
    graph.append({"op": "linear", "name": "head", "out": 3})
    return Case(_spec("prunemlp", {"x": {"shape": ["B", 6]}}, None, graph), {"B": 3})


def _zeroed(state: dict, report: list[dict]) -> dict:
    """The dense weights with every removed channel's rows, biases and norm affines at 0."""
    state = {k: v.clone() for k, v in state.items()}
    for row in report:
        for node, removed in row.get("removed", {}).items():
            for local in ("weight", "bias"):
                if f"{node}.{local}" in state and removed:
                    state[f"{node}.{local}"][removed] = 0
    return state


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= rel * (float(a.abs().max()) + 1e-12)


# -- identities ---------------------------------------------------------------------------------


def test_zero_amount_and_zero_sparsity_are_identities(builder):
    spec, graph = _load(builder, SMALL)
    weights = _seeded(_package(builder, graph, spec)).state_dict()
    for name, options in (("channels", {"amount": 0.0}), ("prune", {"sparsity": 0.0})):
        new, w, _ = run_passes(graph, weights, [(name, options)])
        assert format_graph(new) == format_graph(graph)
        assert w.keys() == weights.keys()
        assert all(torch.equal(w[k], weights[k]) for k in weights)


# -- channels on random models ------------------------------------------------------------------


@EXAMPLES
@given(st.one_of(residual_cnns(), mlps()), st.sampled_from([0.3, 0.5, 0.9]),
       st.sampled_from(["l1", "l2", "bn_scale"]))  # fmt: skip
def test_channels_equals_the_dense_model_with_channels_zeroed(builder, case, amount, importance):
    spec, graph = _load(builder, case.spec)
    dense = _seeded(_package(builder, graph, spec))
    # Random BatchNorm statistics and affines, so the norms cannot hide a wrong slice.
    torch.manual_seed(2)
    norms = {k.rsplit(".", 1)[0] for k in dense.state_dict() if k.endswith("running_var")}
    state = {
        k: torch.rand_like(v) + 0.5
        if k.rsplit(".", 1)[0] in norms and k.endswith(("running_var", "weight"))
        else torch.randn_like(v)
        if k.rsplit(".", 1)[0] in norms and k.endswith(("running_mean", "bias"))
        else v
        for k, v in dense.state_dict().items()
    }
    dense.load_state_dict(state)
    options = {"amount": amount, "importance": importance}
    new, weights, report = run_passes(graph, state, [("channels", options)])
    verify(new)
    assert _interface(new) == _interface(graph)
    pruned = _package(builder, new, spec).Model().eval()
    assert sum(p.numel() for p in pruned.parameters()) == new.num_params()
    pruned.load_state_dict(weights)
    dense.load_state_dict(_zeroed(state, report))
    inputs = _inputs(case, graph)
    with torch.no_grad():
        _close(dense(*inputs), pruned(*inputs), 1e-5)
    assert all("skipped" in r or r["channels_after"] <= r["channels"] for r in report)
    if amount >= 0.5:
        assert any(r.get("channels_after", 0) < r.get("channels", 0) for r in report)


@EXAMPLES
@given(residual_cnns())
def test_structural_channels_builds_and_keeps_the_interface(builder, case):
    spec, graph = _load(builder, case.spec)
    new, weights, report = run_passes(graph, None, [("channels", {"amount": 0.5, "round_to": 2})])
    assert weights is None and _interface(new) == _interface(graph)
    shrunk = any(r["channels_after"] < r["channels"] for r in report if "channels_after" in r)
    assert (new.num_params() < graph.num_params()) == shrunk
    for r in report:
        if "channels_after" in r and r["channels_after"] < r["channels"]:
            assert r["channels_after"] % 2 == 0
    model = _package(builder, new, spec).Model().eval()
    assert sum(p.numel() for p in model.parameters()) == new.num_params()


@EXAMPLES
@given(any_specs, st.sampled_from([0.25, 0.75]))
def test_channels_never_breaks_the_repository_strategies(builder, case, amount):
    """MLPs, CNNs (splits, gates, grouped convs) and transformers: skipping is fine, breaking
    the model is not (run_passes verifies the graph)."""
    _, graph = _load(builder, case.spec)
    new, _, report = run_passes(graph, None, [("channels", {"amount": amount})])
    assert _interface(new) == _interface(graph)
    assert all("skipped" in r or r["channels_after"] >= 1 for r in report)


def test_groups_tie_residual_adds_and_skip_outputs(builder):
    doc = _spec(
        "ties",
        {"x": {"shape": ["B", 3, 8, 8]}},
        {k: v for k, v in _cnn_blocks("relu").items() if k == "res"},
        [
            {"op": "conv2d", "name": "stem", "out": 8, "kernel": 3, "padding": 1},
            {"op": "res", "name": "res", "c": 8},
            {"op": "reshape", "name": "r", "shape": [0, -1]},
            {"op": "linear", "name": "head", "out": 4},
        ],
    )
    _, graph = _load(builder, doc)
    _, _, report = run_passes(graph, None, [("channels", {})])
    rows = {r.get("group", r.get("node")): r for r in report}
    assert rows["stem"]["members"] == ["stem", "res.conv2", "res.bn2"]
    assert rows["stem"]["skipped"] == "it feeds reshape 'r'"
    assert rows["res.conv1"]["channels_after"] == 4
    assert rows["head"]["skipped"] == "it is a model output"


# -- attention heads ----------------------------------------------------------------------------

HEADS = {"ops": ["attention"]}


def _heads_zeroed(graph, state: dict, report: list[dict]) -> dict:
    """The dense weights with every removed head's q/k/v rows and out columns at 0."""
    state = {k: v.clone() for k, v in state.items()}
    for row in report:
        gone = row.get("removed_heads")
        if gone:
            name = row["node"]
            rows, cols = HeadLayout.of(graph, graph.nodes[name]).rows(
                gone["heads"], gone["kv_heads"]
            )
            for local, dim, index in (("qkv.weight", 0, rows), ("qkv.bias", 0, rows),
                                      ("out.weight", 1, cols)):  # fmt: skip
                if f"{name}.{local}" in state:
                    state[f"{name}.{local}"].index_fill_(
                        dim, torch.tensor(index, dtype=torch.long), 0.0
                    )
    return state


@EXAMPLES
@given(transformer_specs(), st.sampled_from([0.25, 0.5, 0.75]), st.sampled_from(["l1", "l2"]))
def test_heads_equal_the_dense_model_with_heads_zeroed(builder, case, amount, importance):
    spec, graph = _load(builder, case.spec)
    dense = _seeded(_package(builder, graph, spec))
    torch.manual_seed(3)  # random biases too, so a wrong bias slice shows
    state = {k: torch.randn_like(v) for k, v in dense.state_dict().items()}
    options = {**HEADS, "amount": amount, "importance": importance}
    new, weights, report = run_passes(graph, state, [("channels", options)])
    verify(new)
    assert _interface(new) == _interface(graph)
    pruned = _package(builder, new, spec).Model().eval()
    assert sum(p.numel() for p in pruned.parameters()) == new.num_params()
    pruned.load_state_dict(weights)
    dense.load_state_dict(_heads_zeroed(graph, state, report))
    inputs = _inputs(case, graph)
    with torch.no_grad():
        _close(dense(*inputs), pruned(*inputs), 1e-4)
    for row in report:
        assert row["op"] == "attention" and 1 <= row["heads_after"] <= row["heads"]
        assert row["heads_after"] % row["kv_heads_after"] == 0
        units = row["kv_heads"] if row["units"] == "kv groups" else row["heads"]
        after = row["kv_heads_after"] if row["units"] == "kv groups" else row["heads_after"]
        assert after == units - int(amount * units)
        assert graph.nodes[row["node"]].attrs.head_dim in (
            None,
            new.nodes[row["node"]].attrs.head_dim,
        )


@EXAMPLES
@given(transformer_specs())
def test_zero_heads_is_the_identity(builder, case):
    _, graph = _load(builder, case.spec)
    new, _, report = run_passes(graph, None, [("channels", {**HEADS, "amount": 0.0})])
    assert format_graph(new) == format_graph(graph)
    assert report and all(r["heads_after"] == r["heads"] for r in report)


def test_grouped_query_heads_go_by_kv_group(builder):
    doc = _spec(
        "gqa",
        {"x": {"shape": ["B", "T", 16]}},
        None,
        [{"op": "attention", "name": "attn", "heads": 8, "kv_heads": 4},
         {"op": "attention", "name": "mqa", "heads": 4, "kv_heads": 1},
         {"op": "linear", "name": "head", "out": 3}],
    )  # fmt: skip
    spec, graph = _load(builder, doc)
    state = _seeded(_package(builder, graph, spec)).state_dict()
    # Group 1 (query heads 2, 3) and query head 0 of the mqa layer are the weakest.
    state["attn.out.weight"][:, 4:8] *= 1e-3
    state["mqa.out.weight"][:, 0:2] *= 1e-3
    new, weights, report = run_passes(graph, state, [("channels", {**HEADS, "amount": 0.5})])
    rows = {r["node"]: r for r in report}
    assert 1 in rows["attn"]["removed_heads"]["kv_heads"]
    assert rows["attn"]["units"] == "kv groups" and rows["mqa"]["units"] == "heads"
    assert (new.nodes["attn"].attrs.heads, new.nodes["attn"].attrs.kv_heads) == (4, 2)
    assert (new.nodes["mqa"].attrs.heads, new.nodes["mqa"].attrs.kv_heads) == (2, 1)
    assert 0 in rows["mqa"]["removed_heads"]["heads"]
    assert new.nodes["attn"].attrs.head_dim == 2 and new.nodes["mqa"].attrs.head_dim == 4
    assert weights["attn.qkv.weight"].shape == ((4 + 2 * 2) * 2, 16)
    assert weights["mqa.out.weight"].shape == (16, 2 * 4)


# -- cnn_digits ---------------------------------------------------------------------------------


def test_cnn_digits_halves_and_exports(tmp_path):
    spec, graph = nlc.load("examples/cnn_digits.yaml")
    new, _, report = run_passes(graph, None, [("channels", {"amount": 0.5})])
    assert graph.num_params() == 93546 and new.num_params() == 23738  # 3.9x fewer
    new.meta["passes"] = report
    nlc.api.write_build(spec, new, tmp_path / "out", onnx=True)
    assert (tmp_path / "out" / "model.onnx").is_file()


# -- unstructured -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(builder):
    spec, graph = _load(builder, SMALL)
    return graph, _seeded(_package(builder, graph, spec)).state_dict()


def test_layer_sparsity_is_exact(small):
    graph, weights = small
    new, w, report = run_passes(graph, weights, [("prune", {"sparsity": 0.3})])
    assert format_graph(new) == format_graph(graph)
    for row in report:
        n = w[f"{row['node']}.weight"].numel()
        assert (
            row["nonzeros"] == n - round(0.3 * n) == int(w[f"{row['node']}.weight"].count_nonzero())
        )
    assert all(torch.equal(w[k], weights[k]) for k in weights if k.endswith("bias"))


def test_global_threshold_is_shared(small):
    graph, weights = small
    _, w, report = run_passes(graph, weights, [("prune", {"sparsity": 0.6, "scope": "global"})])
    keys = [f"{r['node']}.weight" for r in report]
    pruned = torch.cat([weights[k][w[k] == 0].abs().flatten() for k in keys])
    kept = torch.cat([weights[k][w[k] != 0].abs().flatten() for k in keys])
    assert pruned.max() <= kept.min()
    assert len({round(r["sparsity"], 3) for r in report}) > 1  # layers differ
    total = sum(r["params"] for r in report)
    assert sum(r["params"] - r["nonzeros"] for r in report) == round(0.6 * total)


def test_two_of_four_holds_in_every_group(small):
    graph, weights = small
    _, w, report = run_passes(graph, weights, [("prune", {"pattern": "2:4"})])
    done = [r["node"] for r in report if "skipped" not in r]
    assert "fc" in done and "conv2" in done
    for name in done:
        t = w[f"{name}.weight"].movedim(1, -1)
        nonzero = (t.reshape(*t.shape[:-1], -1, 4) != 0).sum(-1)
        assert bool((nonzero == 2).all())
    assert {r["node"]: r.get("skipped") for r in report}["conv1"] == (
        "input size is not a multiple of 4"
    )


# -- errors -------------------------------------------------------------------------------------


def test_prune_needs_weights(small):
    graph, _ = small
    with pytest.raises(NlcError, match="nothing to prune") as e:
        run_passes(graph, None, [("prune", {})])
    assert "--weights" in e.value.hint


@pytest.mark.parametrize("amount", [-0.1, 1.0])
def test_amount_out_of_range(small, amount):
    with pytest.raises(ValidationError):
        ChannelsOptions(amount=amount)
    with pytest.raises(NlcError, match="amount"):
        run_passes(small[0], None, [("channels", {"amount": amount})])
    with pytest.raises(ValidationError):
        PruneOptions(sparsity=1.0)


def test_selection_without_prunable_channels_is_skipped_or_refused(small):
    graph, weights = small
    result = PASSES["channels"].run(copy.deepcopy(graph), weights, ChannelsOptions(select="head"))
    assert not result.modified
    assert result.report == [
        {"pass": "channels", "group": "head", "members": ["head"], "channels": 6,
         "skipped": "it is a model output"}
    ]  # fmt: skip
    with pytest.raises(NlcError, match=r"none of the selected nodes \(dw: grouped convolution"):
        run_passes(graph, None, [("channels", {"select": "dw"})])  # asked for, nothing to do


# -- taylor importance --------------------------------------------------------------------------

TAYLOR = {"amount": 0.5, "importance": "taylor"}


def _mlp_doc(name: str, train: bool = True) -> dict:
    """flatten -> fc (6) -> relu -> head (10) on the digits, as the passes' tests spell specs."""
    doc = _spec(
        name,
        {"x": {"shape": ["B", 1, 8, 8]}},
        None,
        ["flatten", {"op": "linear", "name": "fc", "out": 6}, "relu",
         {"op": "linear", "name": "head", "out": 10}],
    )  # fmt: skip
    return {**doc, "train": {"batch_size": 16, "epochs": 1}} if train else doc


def test_taylor_squares_each_batch_then_averages(small):
    """Hand-made gradients: per batch, (sum of w x g over a channel's entries)^2, averaged over
    the batches, whatever the weights' norms say; opposite signs in two batches do not cancel."""
    dense, weights = small
    graph = copy.deepcopy(dense)
    w = weights["fc.weight"]  # 24 channels, fed by pw's 12
    scale = torch.ones(24)
    scale[[13, 17, 23]] = 0.0  # zero gradient: no loss change, the first to go
    scale[20] = 1e-3  # the next
    grads = {k: torch.zeros(2, *v.shape) for k, v in weights.items()}
    g = scale[:, None] * w.sign() / w.abs().sum(1, keepdim=True)  # sum of w x g = scale
    grads["fc.weight"] = torch.stack([g, -g])
    graph.meta["gradients"] = grads
    result = PASSES["channels"].run(graph, weights, ChannelsOptions(select="fc", **TAYLOR))
    (row,) = [r for r in result.report if r.get("group") == "fc"]
    assert row["importance"] == "taylor" and row["channels_after"] == 12
    removed = row["removed"]["fc"]
    assert {13, 17, 20, 23} <= set(removed)  # ties (sum before squaring) would drop 0..11
    kept = [i for i in range(24) if i not in removed]
    assert result.weights["fc.weight"].shape == (12, 12)
    assert torch.equal(result.weights["fc.weight"], weights["fc.weight"][kept])
    l1 = PASSES["channels"].run(copy.deepcopy(dense), weights, ChannelsOptions(select="fc"))
    assert [r for r in l1.report if r.get("group") == "fc"][0]["removed"]["fc"] != removed


def test_taylor_heads_follow_their_gradients(builder):
    doc = _spec(
        "taylorheads",
        {"x": {"shape": ["B", "T", 16]}},
        None,
        [
            {"op": "attention", "name": "attn", "heads": 4},
            {"op": "linear", "name": "head", "out": 3},
        ],
    )
    spec, graph = _load(builder, doc)
    state = _seeded(_package(builder, graph, spec)).state_dict()
    layout = HeadLayout.of(graph, graph.nodes["attn"])
    grads = {k: torch.ones(3, *v.shape) * v.sign() for k, v in state.items()}  # w x g = |w|
    for h in (0, 2):  # heads 0 and 2 get no gradient: the loss does not see them
        rows, cols = layout.rows([h], [h])
        grads["attn.qkv.weight"][:, rows] = 0
        grads["attn.qkv.bias"][:, rows] = 0
        grads["attn.out.weight"][:, :, cols] = 0
    state["attn.qkv.weight"][layout.rows([0], [0])[0]] *= 100  # the largest by L1
    graph.meta["gradients"] = grads
    result = PASSES["channels"].run(graph, state, ChannelsOptions(ops=["attention"], **TAYLOR))
    (row,) = result.report
    assert row["importance"] == "taylor" and row["removed_heads"]["heads"] == [0, 2]


def test_taylor_uses_the_training_loss(builder):
    """Through `compress` with real gradients on the digits: a hidden channel that the head
    ignores gets zero gradient and goes first, though it has the largest weights; L1 keeps it."""
    spec, graph = _load(builder, _mlp_doc("taylormlp"))
    state = _seeded(_package(builder, graph, spec)).state_dict()
    state["fc.weight"][0] *= 100
    state["head.weight"][:, 0] = 0
    steps = [("channels", TAYLOR)]
    new, weights = nlc.api.compress(spec, graph, state, steps)
    (row,) = [r for r in new.meta["passes"] if r.get("group") == "fc"]
    assert row["importance"] == "taylor" and 0 in row["removed"]["fc"]
    assert "gradients" not in new.meta and "gradients" not in graph.meta
    assert weights["fc.weight"].shape == (3, 64)
    new, _ = nlc.api.compress(spec, graph, state, [("channels", {"amount": 0.5})])
    assert 0 not in [r for r in new.meta["passes"] if r.get("group") == "fc"][0]["removed"]["fc"]


def test_taylor_needs_weights_data_and_gradients(builder, small):
    doc = {**_mlp_doc("taylorerr"), "passes": [{"pass": "channels", "importance": "taylor"}]}
    path = builder.write_spec(doc)
    with pytest.raises(
        NlcError, match=r"taylor importance needs trained weights \(--weights\)"
    ) as e:
        nlc.load(path)
    assert e.value.loc is not None and e.value.loc.line == path.read_text().count("\n") - 1
    spec, graph = _load(builder, _mlp_doc("taylornodata", train=False))
    state = _seeded(_package(builder, graph, spec)).state_dict()
    with pytest.raises(NlcError, match="needs data .* no train section"):
        nlc.api.compress(spec, graph, state, [("channels", TAYLOR)])
    with pytest.raises(NlcError, match="taylor' needs the loss gradients"):
        run_passes(small[0], small[1], [("channels", TAYLOR)])  # not through compress


def test_build_with_taylor_importance_end_to_end(tmp_path):
    from test_train_cli import ROOT, _nlc

    spec, small = ROOT / "examples" / "cnn_digits.yaml", ("--set", "width=8")
    fast = ("--set", "train.epochs=1", "--set", "train.batch_size=256")  # 6 steps
    done = _nlc("train", spec, *small, *fast, "-o", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    taylor = ("--pass", "channels:amount=0.5,importance=taylor")
    built = _nlc("build", spec, *small, *taylor, "--weights", "run", "-o", "out", "--no-onnx",
                 cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    rows = json.loads((tmp_path / "out" / "passes.json").read_text())
    done = [r for r in rows if "skipped" not in r]
    assert len(done) == 4 and all(r["importance"] == "taylor" for r in done)
    assert all(r["channels_after"] == r["channels"] // 2 for r in done)
    weights = torch.load(tmp_path / "out" / "weights.pt", weights_only=True)
    assert weights["stem.conv.weight"].shape == (4, 1, 3, 3)
    bare = _nlc("build", spec, *small, *taylor, "-o", "bare", cwd=tmp_path)
    assert bare.returncode == 2 and "taylor importance needs trained weights" in bare.stderr
