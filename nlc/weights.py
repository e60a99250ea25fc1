"""Trained weights beside the IR: read a checkpoint or a run folder, check it against a graph,
and write the package's `weights.pt`.

Weights are a `state_dict`: qualified parameter (and buffer) names, the IR's node names plus
the op's parameter name, to tensors. Files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nlc.errors import NlcError
from nlc.ir import Graph

if TYPE_CHECKING:  # torch is imported where weights are read: `nlc check` does without it
    import torch

Weights = dict[str, "torch.Tensor"]
WEIGHTS_FILE = "weights.pt"  # in a built package, beside model.onnx


def read_weights(path: Path) -> Weights:
    """A state dict from a `.pt` file (a bare state dict, or a checkpoint with a "model" entry
    as train.py writes), or from a run folder (its best checkpoint, else its last)."""
    import torch

    if path.is_dir():
        found = [path / "checkpoints" / n for n in ("best.pt", "last.pt")]
        found = [f for f in found if f.is_file()]
        if not found:
            raise NlcError(
                f"--weights {path}: the folder has no checkpoints/best.pt or last.pt",
                None,
                "give a training run folder (nlc train -o DIR) or a .pt file",
            )
        path = found[0]
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NlcError(f"--weights {path}: no such file", None, "check the path") from None
    except Exception as e:  # unpickling refuses anything but tensors and plain containers
        raise NlcError(
            f"--weights {path}: not a PyTorch state dict ({type(e).__name__}: {e})",
            None,
            "save the weights with torch.save(model.state_dict(), path)",
        ) from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise NlcError(
            f"--weights {path}: holds no state dict of tensors",
            None,
            "save the weights with torch.save(model.state_dict(), path)",
        )
    return dict(state)


def check_weights(weights: Weights, graph: Graph, where: str) -> None:
    """Every parameter of the graph is in `weights` with its shape; other entries must belong
    to a node of the graph (BatchNorm's running statistics are buffers, not parameters)."""
    missing, wrong = [], []
    for name, param in graph.parameters():
        if name not in weights:
            missing.append(name)
        elif tuple(weights[name].shape) != param.shape:
            wrong.append(f"{name} {list(weights[name].shape)}, the model's {list(param.shape)}")
    nodes = set(graph.nodes)
    stray = [k for k in weights if not _in_node(k, nodes)]
    problems = (
        [f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] * bool(missing)
        + [f"shape of {', '.join(wrong[:3])}"] * bool(wrong)
        + [f"unknown {', '.join(stray[:5])}" + (" ..." if len(stray) > 5 else "")] * bool(stray)
    )
    if problems:
        raise NlcError(
            f"{where} do not fit the model {graph.name}: " + "; ".join(problems),
            None,
            "use the weights of a run of this spec, with the same --set values",
        )


def _in_node(key: str, nodes: set[str]) -> bool:
    """Whether `key` names an entry of some node: a node name is a prefix of it."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in nodes for i in range(1, len(parts)))


def write_weights(folder: Path, weights: Weights) -> Path:
    import torch

    path = folder / WEIGHTS_FILE
    torch.save({k: v.contiguous() for k, v in sorted(weights.items())}, path)
    return path
