"""Hypothesis strategies for random valid spec documents (plain dicts, dumped to YAML by tests).

Every strategy builds its spec step by step while tracking the current shape, so each draw is
valid by construction. Models stay tiny (widths <= 32, spatial <= 16) so one forward takes
milliseconds. A `Case` also carries the concrete sizes to substitute for the symbolic dims.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

ACTIVATIONS = ["relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish"]
MAX_WIDTH = 32

widths = st.integers(1, MAX_WIDTH)
probabilities = st.sampled_from([0.0, 0.1, 0.25])


@dataclass
class Case:
    """A spec document and what a forward pass needs to exercise it."""

    spec: dict[str, Any]
    dims: dict[str, int]  # symbolic dim -> concrete size for the forward
    id_bounds: dict[str, int] = field(default_factory=dict)  # integer input -> exclusive bound

    @property
    def blocks(self) -> list[str]:
        return list(self.spec.get("blocks", {}))


def _spec(name: str, inputs, blocks, graph, outputs=None) -> dict[str, Any]:
    doc: dict[str, Any] = {"nlc": 1, "name": name, "inputs": inputs}
    if blocks:
        doc["blocks"] = blocks
    doc["graph"] = graph
    if outputs:
        doc["outputs"] = outputs
    return doc


def _activation(draw) -> str | dict[str, Any]:
    act = draw(st.sampled_from(ACTIVATIONS))
    if act == "gelu" and draw(st.booleans()):
        return {"op": "gelu", "approximate": "tanh"}
    return act


class _Names:
    """Fresh node names for one graph body."""

    def __init__(self):
        self.n = 0

    def __call__(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"


# -- MLP stacks ---------------------------------------------------------------------------------


def _mlp_blocks(draw) -> dict[str, Any]:
    return {
        "dense": {
            "params": {"w": "int", "p": 0.0},
            "graph": [
                {"op": "linear", "name": "fc", "out": "${w}", "bias": draw(st.booleans())},
                _activation(draw),
                {"op": "dropout", "name": "drop", "p": "${p}"},
            ],
        },
        # Two inputs projected to one width and summed.
        "mix": {
            "params": {"w": "int"},
            "inputs": ["a", "b"],
            "graph": [
                {"op": "linear", "name": "pa", "in": "a", "out": "${w}"},
                {"op": "linear", "name": "pb", "in": "b", "out": "${w}", "bias": False},
                {"op": "add", "in": ["pa", "pb"]},
            ],
        },
        # Two outputs: the halves of the last dimension.
        "halves": {
            "graph": [{"op": "split", "name": "parts", "chunks": 2, "dim": -1}],
            "outputs": ["parts[0]", "parts[1]"],
        },
    }


@st.composite
def mlp_specs(draw) -> Case:
    """Linear stacks over [B, F] or [B, T, F]: activations, norms, dropout, a block repeated at
    several widths, a two-output block, optionally a second input merged by an op or a
    two-input block, and sometimes two model outputs."""
    rank3 = draw(st.booleans())
    lead = ["B", "T"] if rank3 else ["B"]
    width = draw(widths)
    inputs = {"x": {"shape": [*lead, width]}}
    name = _Names()
    graph: list[Any] = []
    kinds = ["linear", "dense", "dense", "halves", "norm", "act", "dropout"]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(kinds))
        node: Any
        if kind == "linear":
            width = draw(widths)
            node = {"op": "linear", "name": name("fc"), "out": width}
            if draw(st.booleans()):
                node["bias"] = False
            if draw(st.booleans()):
                node["repeat"] = draw(st.integers(1, 3))
        elif kind == "dense":
            width = draw(widths)
            node = {"op": "dense", "name": name("dense"), "w": width, "p": draw(probabilities)}
            if draw(st.booleans()):
                node["repeat"] = draw(st.integers(1, 3))
        elif kind == "halves" and width % 2 == 0:
            parts = name("halves")
            graph.append({"op": "halves", "name": parts, **_maybe_repeat_once(draw)})
            merge = draw(st.sampled_from(["add", "mul"]))
            node = {"op": merge, "name": name(merge), "in": [f"{parts}[1]", f"{parts}[0]"]}
            width //= 2
        elif kind == "norm":
            norms = ["layernorm", "rmsnorm"] if rank3 else ["layernorm", "rmsnorm", "batchnorm1d"]
            node = {"op": draw(st.sampled_from(norms)), "name": name("norm")}
        elif kind == "act":
            node = _activation(draw)
        else:  # dropout, also in place of halves of an odd width
            node = {"op": "dropout", "name": name("drop"), "p": draw(probabilities)}
        graph.append(node)
    if draw(st.booleans()):
        # A second input, merged with the current value by an op or the two-input block.
        inputs["y"] = {"shape": [*lead, draw(widths)]}
        here = name("here")
        graph.append({"op": "dropout", "name": here, "p": 0.0})
        merge = draw(st.sampled_from(["add", "mul", "concat", "mix"]))
        if merge == "mix":
            mix = {"op": "mix", "name": name("mix"), "in": [here, "y"], "w": draw(widths)}
            graph.append({**mix, **_maybe_repeat_once(draw)})
        else:
            proj = name("proj")
            graph.append({"op": "linear", "name": proj, "in": "y", "out": width})
            node = {"op": merge, "name": name("merge"), "in": [here, proj]}
            graph.append({**node, "dim": -1} if merge == "concat" else node)
    last = graph[-1]
    graph.append({"op": "linear", "name": "head", "out": draw(widths)})
    outputs = None
    if isinstance(last, dict) and "name" in last and draw(st.booleans()):
        outputs = ["head", last["name"]]
    if draw(st.booleans()):
        # A dead branch: its module holds parameters, but nothing reads its output.
        dead = draw(st.sampled_from([{"op": "linear", "out": 3}, {"op": "dense", "w": 3}]))
        graph.append({**dead, "name": name("dead"), "in": "x"})
        outputs = outputs or ["head"]
    return Case(
        _spec("mlp", inputs, _used(_mlp_blocks(draw), graph), graph, outputs), _dims(draw, lead)
    )


# -- CNN stacks ---------------------------------------------------------------------------------


def _conv2d(name: str, out: int | str, kernel: int | str, **attrs) -> dict[str, Any]:
    return {"op": "conv2d", "name": name, "out": out, "kernel": kernel, **attrs}


def _cnn_blocks(act) -> dict[str, Any]:
    return {
        # Residual block: needs input channels == c; repeated.
        "res": {
            "params": {"c": "int", "k": 3},
            "graph": [
                _conv2d("conv1", "${c}", "${k}", padding="${k // 2}", bias=False),
                {"op": "batchnorm2d", "name": "bn1"},
                act,
                _conv2d("conv2", "${c}", 3, padding=1, bias=False),
                {"op": "batchnorm2d", "name": "bn2"},
                {"op": "add", "in": ["bn2", "x"]},
                act,
            ],
        },
        # Strided block with a projection shortcut, used at several widths (one class).
        "down": {
            "params": {"c": "int", "stride": 2},
            "graph": [
                _conv2d("conv1", "${c}", 3, stride="${stride}", padding=1, bias=False),
                {"op": "batchnorm2d", "name": "bn1"},
                act,
                _conv2d("conv2", "${c}", 3, padding=1),
                _conv2d("proj", "${c}", 1, stride="${stride}", bias=False, **{"in": "x"}),
                {"op": "add", "in": ["conv2", "proj"]},
                act,
            ],
        },
        # Two branches concatenated: 2c channels out.
        "branch": {
            "params": {"c": "int"},
            "graph": [
                _conv2d("a", "${c}", 1),
                _conv2d("b", "${c}", 3, padding="same", **{"in": "x"}),
                {"op": "concat", "in": ["a", "b"], "dim": 1},
                act,
            ],
        },
        # Depthwise-separable convolution.
        "sep": {
            "params": {"c": "int", "cin": "int"},
            "graph": [
                _conv2d("dw", "${cin}", 3, padding=1, groups="${cin}"),
                _conv2d("pw", "${c}", 1),
                {"op": "batchnorm2d", "name": "bn"},
                act,
            ],
        },
        # Nested blocks: a strided block, then n residual blocks.
        "stage": {
            "params": {"c": "int", "n": "int"},
            "graph": [
                {"op": "down", "name": "down", "c": "${c}"},
                {"op": "res", "name": "blocks", "c": "${c}", "repeat": "${n}"},
            ],
        },
        # Gated linear unit over channels: split in two halves, multiply (c/2 channels out).
        "glu": {
            "graph": [
                {"op": "split", "name": "parts", "chunks": 2, "dim": 1},
                {"op": "sigmoid", "in": "parts[1]"},
                {"op": "mul", "in": ["parts[0]", "sigmoid"]},
            ],
        },
    }


@dataclass
class _Feature:
    """Channels and the smallest spatial size the forward may use."""

    c: int
    size: int


def _conv(draw, f: _Feature, name: str) -> dict[str, Any]:
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 1, 2])) if k > 1 else 1
    padding: int | str = draw(st.sampled_from([0, dilation * (k // 2)]))
    if stride == 1 and draw(st.booleans()):
        padding = "same"
    pad = dilation * (k // 2) if padding == "same" else padding
    if f.size + 2 * pad - dilation * (k - 1) - 1 < 0:
        padding = pad = dilation * (k // 2)
    groups = draw(st.sampled_from(sorted({1, f.c, *[g for g in (2, 4) if f.c % g == 0]})))
    out = groups * draw(st.integers(1, max(1, MAX_WIDTH // groups)))
    node = _conv2d(name, out, k)
    if stride != 1:
        node["stride"] = stride
    if padding:
        node["padding"] = padding
    if dilation != 1:
        node["dilation"] = dilation
    if groups != 1:
        node["groups"] = groups
    if draw(st.booleans()):
        node["bias"] = False
    f.c = out
    f.size = (f.size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    return node


@st.composite
def cnn_specs(draw) -> Case:
    """Conv stacks over [B, C, H, W] (H and W sometimes symbolic): random convs (kernels 1/3/5,
    strides, padding, dilation, groups), norms, pooling, residual blocks with `repeat`,
    strided blocks at several widths, concatenated branches, a split-multiply, and a head."""
    symbolic = draw(st.booleans())
    f = _Feature(draw(st.integers(1, 4)), draw(st.sampled_from([8, 12, 16])))
    inputs = {"x": {"shape": ["B", f.c, *(["H", "W"] if symbolic else [f.size, f.size])]}}
    act = _activation(draw)
    name = _Names()
    graph: list[Any] = []
    kinds = ["conv", "norm", "act", "pool", "res", "down", "branch", "sep", "glu", "stage"] * 2
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            graph.append(_conv(draw, f, name("conv")))
        elif kind == "norm":
            # torch refuses to normalise a group of a single value.
            groups = [g for g in (1, 2, 4) if f.c % g == 0 and f.c // g * f.size**2 > 1]
            if not groups or draw(st.booleans()):
                graph.append({"op": "batchnorm2d", "name": name("bn")})
            else:
                graph.append(
                    {"op": "groupnorm", "name": name("gn"), "groups": draw(st.sampled_from(groups))}
                )
        elif kind == "act":
            graph.append(_activation(draw))
        elif kind == "pool" and f.size >= 2:
            op = draw(st.sampled_from(["maxpool2d", "avgpool2d"]))
            if f.size >= 3 and draw(st.booleans()):
                graph.append(
                    {"op": op, "name": name("pool"), "kernel": 3, "stride": 2, "padding": 1}
                )
                f.size = (f.size - 1) // 2 + 1
            else:
                graph.append({"op": op, "name": name("pool"), "kernel": 2})
                f.size //= 2
        elif kind == "res":
            node = {"op": "res", "name": name("res"), "c": f.c, "repeat": draw(st.integers(1, 3))}
            if draw(st.booleans()):
                node["k"] = draw(st.sampled_from([1, 3, 5]))
            graph.append(node)
        elif kind == "down":
            c = draw(widths)
            node = {"op": "down", "name": name("down"), "c": c}
            if draw(st.booleans()):
                node["stride"] = 1
            else:
                f.size = (f.size - 1) // 2 + 1
            graph.append(node)
            f.c = c
        elif kind == "branch":
            c = draw(st.integers(1, MAX_WIDTH // 2))
            graph.append({"op": "branch", "name": name("branch"), "c": c})
            f.c = 2 * c
        elif kind == "sep":
            c = draw(widths)
            graph.append({"op": "sep", "name": name("sep"), "c": c, "cin": f.c})
            f.c = c
        elif kind == "glu" and f.c % 2 == 0:
            graph.append({"op": "glu", "name": name("glu")})
            f.c //= 2
        elif kind == "stage":
            f.c = draw(widths)
            f.size = (f.size - 1) // 2 + 1
            graph.append(
                {"op": "stage", "name": name("stage"), "c": f.c, "n": draw(st.integers(1, 2))}
            )
    if draw(st.booleans()):
        graph.append("global_avgpool")
    else:
        size = draw(st.sampled_from([1, 2]))
        graph += [{"op": "adaptive_avgpool2d", "size": size}, "flatten"]
    graph.append({"op": "linear", "name": "head", "out": draw(widths)})
    dims = _dims(draw, ["B"])
    if symbolic:
        # Sizes only grow from the smallest valid one, so every conv and pool stays valid.
        dims["H"] = 16 + draw(st.integers(0, 3))
        dims["W"] = 16 + draw(st.integers(0, 3))
    return Case(_spec("cnn", inputs, _used(_cnn_blocks(act), graph), graph), dims)


# -- transformer stacks -------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def _layer_block(draw, dims: list[tuple[int, int]]) -> dict[str, Any]:
    """A pre-norm transformer layer valid for every (dim, heads) it is instantiated with."""
    norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    attn: dict[str, Any] = {"op": "attention", "name": "attn", "heads": "${heads}"}
    if all(h % 2 == 0 for _, h in dims) and draw(st.booleans()):
        attn["kv_heads"] = "${heads // 2}"
    if all((d // h) % 2 == 0 for d, h in dims) and draw(st.booleans()):
        attn["rope"] = True
    for key in ("causal", "bias"):
        if draw(st.booleans()):
            attn[key] = draw(st.booleans())
    if draw(st.booleans()):
        attn["dropout"] = draw(probabilities)

    def residual(branch: list[Any], into: str, name: str) -> list[Any]:
        if draw(st.booleans()):
            branch.append({"op": "layer_scale", "init": draw(st.sampled_from([1e-5, 0.1, 1.0]))})
        if draw(st.booleans()):
            branch.append({"op": "stochastic_depth", "p": draw(probabilities)})
        last = branch[-1]
        last["name"] = f"{name}_out"
        return [*branch, {"op": "add", "name": name, "in": [into, last["name"]]}]

    if draw(st.booleans()):
        mlp = [
            {
                "op": "gated_mlp",
                "hidden": "${hidden}",
                "act": draw(st.sampled_from(["silu", "gelu"])),
            }
        ]
    else:
        mlp = [
            {"op": "linear", "name": "fc1", "out": "${hidden}"},
            _activation(draw),
            {"op": "linear", "name": "fc2", "out": "${dim}"},
        ]
    graph = [
        *residual([{"op": norm, "name": "norm1"}, attn], "x", "res1"),
        *residual([{"op": norm, "name": "norm2"}, *mlp], "res1", "res2"),
    ]
    return {"params": {"dim": "int", "heads": "int", "hidden": "int"}, "graph": graph}


@st.composite
def _stage_dims(draw) -> tuple[int, int]:
    dim = draw(st.sampled_from([4, 8, 12, 16, 24, 32]))
    return dim, draw(st.sampled_from(_divisors(dim)))


@st.composite
def transformer_specs(draw) -> Case:
    """Token-embedding or linear-projection input, optional class token and learned positions,
    one or two stages of a repeated transformer layer (the second at another width), a final
    norm and a tied LM head or a pooled classifier."""
    stages = draw(st.lists(_stage_dims(), min_size=1, max_size=2))
    block = draw(_layer_block(stages))
    max_t = draw(st.integers(2, 8))
    dim = stages[0][0]
    graph: list[Any] = []
    id_bounds = {}
    embedding = draw(st.booleans())
    if embedding:
        vocab = draw(st.integers(2, MAX_WIDTH))
        inputs = {"ids": {"shape": ["B", "T"], "dtype": "i64"}}
        graph.append({"op": "embedding", "name": "emb", "num": vocab, "dim": dim})
        id_bounds["ids"] = vocab
    else:
        inputs = {"x": {"shape": ["B", "T", draw(widths)]}}
        graph.append({"op": "linear", "name": "embed", "out": dim})
    cls = draw(st.booleans())
    if cls:
        graph.append({"op": "cls_token", "name": "cls"})
    if draw(st.booleans()):
        graph.append({"op": "pos_embedding", "name": "pos", "num": max_t + cls})
    for i, (d, heads) in enumerate(stages):
        if d != dim:
            graph.append({"op": "linear", "name": f"to_stage{i}", "out": d})
            dim = d
        layer = {"op": "layer", "name": f"stage{i}", "dim": d, "heads": heads}
        layer["hidden"] = draw(st.integers(1, MAX_WIDTH))
        layer["repeat"] = draw(st.integers(1, 3))
        graph.append(layer)
    graph.append({"op": draw(st.sampled_from(["layernorm", "rmsnorm"])), "name": "norm_f"})
    head = draw(st.sampled_from(["tied", "mean", "first"]))
    if head == "tied" and embedding and dim == stages[0][0]:
        graph.append({"op": "linear", "name": "lm_head", "out": vocab, "bias": False, "tie": "emb"})
    else:
        if head == "first" or (head == "tied" and cls):
            graph.append({"op": "select", "name": "pool", "dim": 1, "index": 0})
        else:
            graph.append({"op": "mean", "name": "pool", "dims": [1]})
        graph.append({"op": "linear", "name": "classifier", "out": draw(widths)})
    dims = _dims(draw, ["B"])
    dims["T"] = draw(st.integers(1, max_t))
    return Case(_spec("transformer", inputs, {"layer": block}, graph), dims, id_bounds)


def _maybe_repeat_once(draw) -> dict[str, Any]:
    """`repeat: 1` makes a one-member `nn.ModuleList`, even for multi-input/output blocks."""
    return {"repeat": 1} if draw(st.booleans()) else {}


def _used(blocks: dict[str, Any], graph: list[Any]) -> dict[str, Any]:
    """The blocks the graph calls, directly or through other blocks (each becomes a class)."""
    ops = {item["op"] for item in graph if isinstance(item, dict)}
    for name in list(ops):
        if name in blocks:
            ops |= set(_used(blocks, blocks[name]["graph"]))
    return {k: v for k, v in blocks.items() if k in ops}


def _dims(draw, names: list[str]) -> dict[str, int]:
    return {n: draw(st.integers(1, 3)) for n in names}


any_specs = st.one_of(mlp_specs(), cnn_specs(), transformer_specs())


def shuffled(doc: Any, seed: int) -> Any:
    """The same document with the keys of every mapping reordered (lists keep their order),
    except `params` and `inputs`, whose orders are those of the arguments in the code."""
    rng = random.Random(seed)

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            items = [(k, walk(v, k)) for k, v in node.items()]
            if key not in ("params", "inputs"):
                rng.shuffle(items)
            return dict(items)
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(doc)
