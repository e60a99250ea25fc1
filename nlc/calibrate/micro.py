"""The calibration micro-benchmarks: one-op nlc specs (or an op with the epilogue models put
after it), each measured at a few sizes of its symbolic dims.

They are specs rather than hand-written kernels so that they run exactly as a model built by
nlc does (same export, same runtime graph optimisations), and the cost model analyses them
like any other graph. Sizes span cache-resident to DRAM-sized tensors and launch-bound to
compute-bound work. None of them is a whole model: `benchmarks/cost_model_accuracy.py`
evaluates on models, which the fit never sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Micro:
    name: str
    doc: dict[str, Any]  # the spec document
    sizes: tuple[dict[str, int], ...]  # symbolic dims to measure at


def _micro(name: str, shape: list, graph: list, sizes, dtype="f32", **inputs) -> Micro:
    """A spec named m with input x of `shape` (and any other `inputs`) running `graph`."""
    doc = {"nlc": 1, "name": "m", "inputs": {"x": {"shape": shape, "dtype": dtype}, **inputs}}
    return Micro(name, {**doc, "graph": graph}, sizes)


def _b(*values: int) -> tuple[dict[str, int], ...]:
    return tuple({"B": v} for v in values)


def _bt(*pairs: tuple[int, int]) -> tuple[dict[str, int], ...]:
    return tuple({"B": b, "T": t} for b, t in pairs)


def _hw(*sides: int) -> tuple[dict[str, int], ...]:
    """One image of each side length."""
    return tuple({"B": 1, "H": s, "W": s} for s in sides)


def _linear(k: int, n: int, sizes, act: str | None = None) -> Micro:
    graph = [{"op": "linear", "name": "fc", "out": n}, *([act] if act else [])]
    return _micro(f"linear_{k}x{n}{'_' + act if act else ''}", ["B", k], graph, sizes)


def _chain(depth: int) -> Micro:
    """Tiny linear layers in a row: what each kernel and each call costs beyond its work."""
    graph = [{"op": "linear", "name": f"fc{i}", "out": 32} for i in range(depth)]
    return _micro(f"chain{depth}_32", ["B", 32], graph, _b(1, 64))


def _conv(cin: int, cout: int, kernel: int, sizes, depthwise=False, stride=1, image=0) -> Micro:
    """Conv, batchnorm, relu, as convolutions come in models. A strided conv gets a fixed
    `image` size: the exporter cannot keep H and W symbolic through it."""
    conv = {"op": "conv2d", "name": "conv", "out": cout, "kernel": kernel, "stride": stride,
            "padding": kernel // 2, "bias": False, "groups": cin if depthwise else 1}  # fmt: skip
    name = f"{'dwconv' if depthwise else 'conv'}{kernel}_{cin}x{cout}_s{stride}"
    name += f"_{image}" if image else ""
    shape = ["B", cin, *([image, image] if image else ["H", "W"])]
    return _micro(name, shape, [conv, {"op": "batchnorm2d", "name": "bn"}, "relu"], sizes)


def _attention(dim: int, heads: int, sizes, **attrs) -> Micro:
    name = "_".join(["attention", str(dim), *sorted(attrs)])
    graph = [{"op": "attention", "name": "attn", "heads": heads, **attrs}]
    return _micro(name, ["B", "T", dim], graph, sizes)


MICROS: tuple[Micro, ...] = (
    # matmul: GEMV-like to compute-bound, skinny outputs, weights in cache and in DRAM
    _linear(64, 64, _b(1, 64, 2048)),
    _linear(256, 256, _b(1, 32, 512)),
    _linear(1024, 1024, _b(1, 16, 256)),
    _linear(2048, 2048, _b(1, 64)),
    _linear(512, 10, _b(1, 1024)),
    _linear(256, 256, _b(1, 256), act="relu"),
    _chain(8),
    _chain(32),
    _micro(
        "linear3d_256x768",
        ["B", "T", 256],
        [{"op": "linear", "name": "fc", "out": 768}],
        _bt((1, 16), (1, 128)),
    ),
    _micro(
        "linear3d_768x3072",
        ["B", "T", 768],
        [{"op": "linear", "name": "fc", "out": 3072}],
        _bt((1, 16), (1, 64)),
    ),
    _micro(
        "gated_mlp_256x688",
        ["B", "T", 256],
        [{"op": "gated_mlp", "name": "mlp", "hidden": 688}],
        _bt((1, 16), (1, 128)),
    ),
    # conv: few and many channels, small and large images, strided stems, 1x1 and 3x3
    _conv(16, 16, 3, _hw(16, 64)),
    _conv(64, 64, 3, _hw(8, 32)),
    _conv(256, 256, 3, _hw(7, 14)),
    _conv(64, 256, 1, _hw(14, 28)),
    _conv(3, 32, 3, _b(1), stride=2, image=64),
    _conv(3, 32, 3, _b(1), stride=2, image=160),
    _conv(32, 32, 3, _hw(28, 112), depthwise=True),
    _conv(256, 256, 3, _hw(7, 28), depthwise=True),
    # elementwise, norm, reduce, copy: from a few KiB (launch-bound) to DRAM-sized
    _micro("relu_4096", ["B", 4096], ["relu"], _b(1, 64, 1024, 8192)),
    _micro("gelu_4096", ["B", 4096], ["gelu"], _b(1, 256, 4096)),
    _micro(
        "add_4096",
        ["B", 4096],
        [{"op": "add", "in": ["x", "y"]}],
        _b(1, 256, 4096),
        y={"shape": ["B", 4096]},
    ),
    _micro("layernorm_1024", ["B", 1024], [{"op": "layernorm", "name": "n"}], _b(1, 64, 4096)),
    _micro("rmsnorm_1024", ["B", 1024], [{"op": "rmsnorm", "name": "n"}], _b(1, 64, 4096)),
    _micro("softmax_1024", ["B", 1024], ["softmax"], _b(1, 64, 4096)),
    _micro("global_avgpool_256", ["B", 256, "H", "W"], ["global_avgpool"], _hw(7, 28)),
    *(
        _micro(f"maxpool_64_{s}", ["B", 64, s, s], [{"op": "maxpool2d", "kernel": 2}], _b(1))
        for s in (16, 64)
    ),
    _micro(
        "embedding_4096x256",
        ["B", "T"],
        [{"op": "embedding", "name": "emb", "num": 4096, "dim": 256}],
        _bt((1, 16), (4, 512)),
        dtype="i64",
    ),
    # attention with its projections, plain and with every option
    _attention(128, 4, _bt((1, 8), (1, 64), (1, 256))),
    _attention(128, 4, _bt((1, 8), (1, 256)), causal=True, rope=True, kv_heads=2),
    _attention(384, 6, _bt((1, 32), (2, 128))),
    _micro("spectral_mixing_256", ["B", "T", 256], ["spectral_mixing"], _bt((1, 32), (1, 256))),
)
