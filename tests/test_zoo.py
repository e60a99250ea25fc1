"""Every example spec builds to a package whose model matches the IR: parameter count, names,
shapes and ties, and the output shape of one forward pass in eval mode."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import example_specs
import pytest
import sympy
import torch
from torch import nn

import nlc
from nlc.ir import Graph

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIZES = {"B": 2, "T": 16}  # values of the symbolic input dims for the forward pass

Check = Callable[[nn.Module, dict[str, torch.Tensor], torch.Tensor], None]


def _llama_tiny_count(vocab=32000, dim=256, layers=4, heads=8, kv_heads=2, hidden=688) -> int:
    head_dim = dim // heads
    attn = dim * (heads + 2 * kv_heads) * head_dim + heads * head_dim * dim
    layer = 2 * dim + attn + 3 * dim * hidden  # two RMSNorm weights, attention, SwiGLU
    return 2 * vocab * dim + layers * layer + dim  # embedding, layers, final norm, untied head


def _vit_b16_shapes(dim=768, mlp=3072, layers=12, tokens=197, classes=1000) -> list[tuple]:
    block = [(dim,)] * 4 + [(3 * dim, dim), (3 * dim,), (dim, dim), (dim,)]
    block += [(mlp, dim), (mlp,), (dim, mlp), (dim,)]
    stem = [(dim, 3, 16, 16), (dim,), (1, 1, dim), (tokens, dim)]
    return sorted(stem + block * layers + [(dim,), (dim,), (classes, dim), (classes,)])


def _check_vit_b16(model, inputs, out) -> None:
    shapes = sorted(tuple(t.shape) for t in model.state_dict().values())
    assert shapes == _vit_b16_shapes()
    # An encoder block computes what torch's own pre-norm encoder layer does with its weights.
    block = model.blocks[0]
    ref = nn.TransformerEncoderLayer(
        768,
        12,
        3072,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=1e-6,
        batch_first=True,
        norm_first=True,
    ).eval()
    names = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "fc": "linear1",
        "proj": "linear2",
        "attn.qkv.weight": "self_attn.in_proj_weight",
        "attn.qkv.bias": "self_attn.in_proj_bias",
        "attn.out": "self_attn.out_proj",
    }
    state = {}
    for key, value in block.state_dict().items():
        for ours, theirs in names.items():
            if key.startswith(ours):
                state[theirs + key[len(ours) :]] = value
    ref.load_state_dict(state)
    x = 0.01 * torch.randn(2, 10, 768)  # small activations make a wrong layernorm eps visible
    torch.testing.assert_close(block(x), ref(x))


def _check_llama_tiny(model, inputs, out) -> None:
    sd = model.state_dict()
    qkv = (8 + 2 * 2) * 32  # 8 query heads and 2 key + 2 value heads of 32
    assert sd["layers.0.attn.qkv.weight"].shape == (qkv, 256)
    assert sd["layers.0.attn.out.weight"].shape == (256, 256)
    assert not any(k.endswith("bias") for k in sd)
    assert sd["layers.0.mlp.gate.weight"].shape == sd["layers.0.mlp.up.weight"].shape == (688, 256)
    _check_causal(model, inputs, out)


def _check_causal(model, inputs, out) -> None:
    # Rows 0 and 1 differ only in the last token (see `_inputs`): earlier positions agree.
    torch.testing.assert_close(out[0, :-1], out[1, :-1])
    assert not torch.allclose(out[0, -1], out[1, -1])


def _check_bidirectional(model, inputs, out) -> None:
    # Fourier mixing spreads the last token over every position.
    assert not torch.allclose(out[0, 0], out[1, 0])


# spec name -> (exact parameter count, extra check of the model, its inputs and output)
ZOO: dict[str, tuple[int, Check | None]] = {
    "cnn_digits": (93_546, None),
    "mlp_digits": (26_122, None),
    "resnet18": (11_689_512, None),
    # stem conv+bn, layer1 (2 convs 32->32 + bns), layer2 (32->64, 64->64, 1x1 proj + bns),
    # layer2_rest (2 convs 64->64 + bns), head
    "resnet_digits": (288 + 64 + 18_560 + 57_728 + 73_984 + 650, None),
    "resnet50": (25_557_032, None),
    "mobilenet_v2": (3_504_872, None),
    "vit_b16": (86_567_656, _check_vit_b16),
    "gpt2_small": (124_439_808, _check_causal),
    "llama_tiny": (_llama_tiny_count(), _check_llama_tiny),
    "spectral_lm": (6_341_440, _check_bidirectional),
}


def test_every_example_has_an_entry():
    assert example_specs.MODELS == sorted(ZOO)


def _concrete(shape) -> tuple[int, ...]:
    subs = {sympy.Symbol(k, integer=True, positive=True): v for k, v in SIZES.items()}
    return tuple(int(sympy.sympify(d).subs(subs)) for d in shape)


def _inputs(graph: Graph) -> dict[str, torch.Tensor]:
    """Random inputs; integer ids get a batch whose rows differ only in the last token."""
    torch.manual_seed(0)
    vocab = min((n.attrs.num for n in graph if n.op == "embedding"), default=2)
    out = {}
    for node in graph.inputs:
        shape = _concrete(node.type.shape)
        if node.type.dtype.startswith("i"):
            ids = torch.randint(0, vocab - 1, shape)
            ids[1:] = ids[0]
            ids[1:, -1] = vocab - 1
            out[node.name] = ids
        else:
            out[node.name] = torch.randn(shape)
    return out


def _purge(package: str) -> None:
    for mod in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[mod]


@pytest.fixture
def import_package():
    """Imports a generated package from its build folder, forgetting it afterwards."""
    names = []

    def load(folder: Path, package: str):
        _purge(package)
        names.append(package)
        sys.path.insert(0, str(folder))
        try:
            return importlib.import_module(package)
        finally:
            sys.path.remove(str(folder))

    yield load
    for package in names:
        _purge(package)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_example_builds_and_matches_ir(name, tmp_path, import_package):
    expected, check = ZOO[name]
    spec = EXAMPLES / f"{name}.yaml"
    _, graph = nlc.load(spec)
    out_dir = nlc.build(spec, tmp_path / name, onnx=False)
    model = import_package(out_dir, graph.name).Model().eval()

    assert sum(p.numel() for p in model.parameters()) == graph.num_params() == expected
    ir = dict(graph.parameters())
    buffers = {k for k, _ in model.named_buffers()}
    sd = {k: v for k, v in model.state_dict().items() if k not in buffers}
    assert set(sd) == set(ir)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: p.shape for k, p in ir.items()}
    for key, p in ir.items():
        if p.tied_to is not None:
            assert sd[key].data_ptr() == sd[p.tied_to].data_ptr(), key

    inputs = _inputs(graph)
    with torch.no_grad():
        out = model(**inputs)
        (value,) = graph.outputs.values()
        assert tuple(out.shape) == _concrete(graph.type_of(value).shape)
        assert torch.isfinite(out).all()
        if check is not None:
            check(model, inputs, out)
