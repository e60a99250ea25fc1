"""The PyTorch emitter: classes per block, constructor arguments, variable names, calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from strategies import _spec

import nlc
from nlc.emit import emit
from nlc.emit.pytorch import ClassDef

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _classes(example: str) -> dict[str, ClassDef]:
    return {c.name: c for c in emit(nlc.load(EXAMPLES / f"{example}.yaml")[1]).classes}


def _doc(graph, blocks=None, inputs=None, outputs=None, name="m") -> dict:
    return _spec(name, inputs or {"x": {"shape": ["B", 8]}}, blocks, graph, outputs)


def _lines(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines()]


def test_residual_forward_reads_like_handwritten_code():
    classes = _classes("resnet18")
    assert classes["Basic"].forward == [
        "h = self.conv1(x)",
        "h = self.bn1(h)",
        "h = F.relu(h)",
        "h = self.conv2(h)",
        "h = self.bn2(h)",
        "h = h + x",
        "h = F.relu(h)",
    ]
    assert classes["Basic"].returns == "h"
    # The shortcut reuses `x` once the main branch no longer needs it.
    assert classes["BasicDown"].forward[5:7] == ["x = self.proj(x)", "x = self.proj_bn(x)"]
    assert classes["Model"].forward[:3] == ["x = self.conv1(x)", "x = self.bn1(x)", "x = F.relu(x)"]


def test_repeat_becomes_a_module_list_loop():
    model = _classes("resnet18")["Model"]
    assert "self.layer1 = nn.ModuleList([Basic(c=64) for _ in range(2)])" in model.init
    assert model.forward[4:6] == ["for block in self.layer1:", "    x = block(x)"]


def test_constructor_arguments_are_named_after_block_params():
    classes = _classes("cnn_digits")
    conv_bn = classes["ConvBn"]
    # `c` and `stride` are the block's params; in_channels is derived from the input shape.
    assert conv_bn.args == ["c: int", "stride: int", "in_channels: int"]
    assert conv_bn.init[0] == (
        "self.conv = nn.Conv2d(in_channels, c, kernel_size=3, stride=stride, padding=1, bias=False)"
    )
    assert classes["Model"].init[:2] == [
        "self.stem = ConvBn(c=32, stride=1, in_channels=1)",
        "self.down = ConvBn(c=64, stride=2, in_channels=32)",
    ]


def test_resnet_stages_share_one_class_per_block():
    assert list(_classes("resnet18")) == ["Basic", "BasicDown", "Model"]


def test_tie_and_custom_layers():
    model = _classes("gpt2_small")["Model"]
    assert model.init[-1] == "self.lm_head.weight = self.wte.weight"
    assert "self.h = nn.ModuleList([Decoder() for _ in range(12)])" in model.init


def test_module_list_spells_out_members_that_differ(builder):
    blocks = {"dense": {"params": {"w": "int"}, "graph": [{"op": "linear", "out": "${w}"}]}}
    built = builder.build(
        _doc(
            [
                {"op": "dense", "name": "body", "w": 4, "repeat": 2},
                {"op": "linear", "name": "scale", "out": 4, "repeat": 3},
            ],
            blocks,
        )
    )
    lines = _lines(built.text("model.py"))
    # The first member reads 8 features, the second 4: one class, two constructor calls.
    assert "self.body = nn.ModuleList([Dense(in_features=8), Dense(in_features=4)])" in lines
    assert "self.scale = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])" in lines
    assert "for layer in self.scale:" in lines
    assert built.load().Model()(torch.zeros(2, 8)).shape == (2, 4)


def test_derived_arguments_get_prefixed_names_when_ambiguous(builder):
    blocks = {
        "mix": {
            "inputs": ["a", "b"],
            "graph": [
                {"op": "linear", "name": "pa", "in": "a", "out": 4},
                {"op": "linear", "name": "pb", "in": "b", "out": 4},
                {"op": "add", "in": ["pa", "pb"]},
            ],
        }
    }
    inputs = {"x": {"shape": ["B", 8]}, "y": {"shape": ["B", 6]}}
    built = builder.build(
        _doc(
            [
                {"op": "mix", "name": "m1", "in": ["x", "y"]},
                {"op": "mix", "name": "m2", "in": ["y", "x"]},
                {"op": "add", "in": ["m1", "m2"]},
            ],
            blocks,
            inputs,
        )
    )
    lines = _lines(built.text("model.py"))
    assert "def __init__(self, in_features: int, pb_in_features: int) -> None:" in lines
    assert "self.m1 = Mix(in_features=8, pb_in_features=6)" in lines
    assert "self.m2 = Mix(in_features=6, pb_in_features=8)" in lines
    # A multi-input block: each input is a parameter of forward, in declaration order.
    assert "def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:" in lines
    assert "y = self.m2(y, x)" in lines
    x, y = torch.randn(2, 8), torch.randn(2, 6)
    assert built.load().Model()(x, y).shape == (2, 4)


def test_multi_output_block_and_model_outputs_as_tuple(builder):
    blocks = {
        "halves": {
            "graph": [{"op": "split", "name": "parts", "chunks": 2}],
            "outputs": ["parts[0]", "parts[1]"],
        }
    }
    built = builder.build(
        _doc(
            [
                {"op": "halves", "name": "t"},
                {"op": "mul", "name": "prod", "in": ["t[0]", "t[1]"]},
                {"op": "linear", "name": "head", "out": 3},
            ],
            blocks,
            outputs=["head", "t[1]"],
        )
    )
    lines = _lines(built.text("model.py"))
    assert "def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:" in lines
    assert "h, h1 = x.chunk(2, dim=-1)" in lines
    assert "h, h1 = self.t(x)" in lines
    assert lines.count("return h, h1") == 2  # the block's outputs, then the model's
    x = torch.randn(2, 8)
    head, second = built.load().Model()(x)
    assert head.shape == (2, 3)
    assert torch.equal(second, x[:, 4:])


def test_structurally_different_instances_get_their_own_classes(builder):
    blocks = {
        # `pick` renders `x[:, 0]` or `x[:, :, 0]`: no literal can bridge that.
        "pick": {"params": {"d": "int"}, "graph": [{"op": "select", "dim": "${d}", "index": 0}]},
        # Its camel-case name is what a second `pick` class would be called.
        "pick2": {"graph": [{"op": "linear", "out": 8}]},
        # `F` would shadow torch.nn.functional.
        "f": {"graph": ["relu"]},
    }
    built = builder.build(
        _doc(
            [
                {"op": "pick2", "name": "a"},
                {"op": "pick", "name": "b", "d": 1},
                {"op": "pick", "name": "c", "d": 2},
                {"op": "f", "name": "act"},
            ],
            blocks,
            {"x": {"shape": ["B", 4, 4, 8]}},
        )
    )
    lines = _lines(built.text("model.py"))
    classes = [line for line in lines if line.startswith("class ")]
    assert classes == [
        "class Pick2(nn.Module):",
        "class Pick(nn.Module):",
        "class Pick3(nn.Module):",
        "class FBlock(nn.Module):",
        "class Model(nn.Module):",
    ]
    assert lines.count("x = x[:, :, 0]") == 1
    model = built.load().Model()
    assert [type(m).__name__ for m in model.children()] == ["Pick2", "Pick", "Pick3", "FBlock"]
    assert model(torch.randn(2, 4, 4, 8)).shape == (2, 4)


def test_loop_variable_does_not_shadow_an_input(builder):
    inputs = {"x": {"shape": ["B", 8]}, "layer": {"shape": ["B", 8]}}
    graph = [{"op": "linear", "out": 8, "repeat": 2}, {"op": "add", "in": ["linear", "layer"]}]
    built = builder.build(_doc(graph, inputs=inputs))
    assert "for layer_ in self.linear:" in _lines(built.text("model.py"))
    model = built.load().Model()
    x, layer = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.allclose(model(x, layer), model.linear[1](model.linear[0](x)) + layer)


def test_one_value_passed_to_two_inputs(builder):
    blocks = {"two": {"inputs": ["p", "q"], "graph": [{"op": "mul", "in": ["p", "q"]}]}}
    built = builder.build(_doc([{"op": "two", "name": "sq", "in": ["x", "x"]}], blocks))
    lines = _lines(built.text("model.py"))
    assert "def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:" in lines
    x = torch.randn(2, 8)
    assert torch.equal(built.load().Model()(x), x * x)


def test_repeat_once_of_multi_input_and_multi_output_blocks(builder):
    blocks = {
        "two": {"inputs": ["p", "q"], "graph": [{"op": "add", "in": ["p", "q"]}]},
        "halves": {
            "graph": [{"op": "split", "name": "s", "chunks": 2}],
            "outputs": ["s[0]", "s[1]"],
        },
    }
    graph = [
        {"op": "two", "name": "sum", "in": ["x", "x"], "repeat": 1},
        {"op": "halves", "name": "h", "repeat": 1},
        {"op": "add", "in": ["h[0]", "h[1]"]},
    ]
    built = builder.build(_doc(graph, blocks))
    lines = _lines(built.text("model.py"))
    assert "x = self.sum[0](x, x)" in lines
    assert "h, h1 = self.h[0](x)" in lines
    x = torch.randn(2, 8)
    assert torch.equal(built.load().Model()(x), (x + x)[:, :4] + (x + x)[:, 4:])


def test_dead_nodes_keep_their_parameters_but_are_not_called(builder):
    blocks = {"lin": {"graph": [{"op": "linear", "name": "fc", "out": 8}]}}
    graph = [
        {"op": "lin", "name": "unused_block"},
        {"op": "linear", "name": "unused", "in": "x", "out": 2},
        {"op": "relu", "name": "unused_act"},
        {"op": "linear", "name": "head", "in": "x", "out": 4},
    ]
    built = builder.build(_doc(graph, blocks))
    model_py = built.text("model.py")
    assert "self.unused_block = Lin()" in model_py
    assert "self.unused(" not in model_py and "self.unused_block(" not in model_py
    # Only the dead relu would have needed torch.nn.functional.
    assert "F.relu" not in model_py and "import torch.nn.functional as F" not in model_py
    model = built.load().Model()
    assert "unused_block.fc.weight" in model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == built.graph.num_params()


def test_constructor_arguments_do_not_shadow_builtins(builder):
    blocks = {
        "stack": {
            "params": {"range": "int", "super": "int"},
            "graph": [{"op": "linear", "out": "${super}", "repeat": "${range}"}],
        }
    }
    graph = [
        {"op": "stack", "name": "a", "range": 2, "super": 8},
        {"op": "linear", "name": "down", "out": 4},
        {"op": "stack", "name": "b", "range": 3, "super": 4},
    ]
    built = builder.build(_doc(graph, blocks))
    lines = _lines(built.text("model.py"))
    # The widths equal `super` and the depths `range`, but these names would break the body.
    assert "def __init__(self, in_features: int, depth: int) -> None:" in lines
    assert "self.b = Stack(in_features=4, depth=3)" in lines
    assert built.load().Model()(torch.zeros(2, 8)).shape == (2, 4)


def test_non_finite_float_literal(builder):
    graph = [{"op": "layernorm", "eps": float("inf")}]
    built = builder.build(_doc(graph))
    assert 'self.layernorm = nn.LayerNorm(8, eps=float("inf"))' in _lines(built.text("model.py"))
    assert built.load().Model().layernorm.eps == float("inf")


@pytest.mark.parametrize("example", ["cnn_digits", "resnet18", "gpt2_small"])
def test_examples_emit_one_class_per_block(example):
    spec = nlc.load(EXAMPLES / f"{example}.yaml")[0]
    assert len(_classes(example)) == len(spec.ast.blocks) + 1


def test_embedding_std_initialises_the_table(builder):
    doc = {
        "nlc": 1,
        "name": "emb_std",
        "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
        "graph": [
            {"op": "embedding", "name": "small", "num": 4000, "dim": 64, "std": 0.02},
            {"op": "embedding", "name": "plain", "in": "ids", "num": 4000, "dim": 64},
            {"op": "add", "in": ["small", "plain"]},
        ],
    }
    built = builder.build(doc)
    assert "nn.init.normal_(self.small.weight, std=0.02)" in built.text("model.py")
    model = built.load().Model()
    assert abs(model.small.weight.std().item() - 0.02) < 0.002
    assert abs(model.plain.weight.std().item() - 1.0) < 0.05  # PyTorch's default N(0, 1)
