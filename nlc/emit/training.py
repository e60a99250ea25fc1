"""Emit the training files of a package: `train.py`, `data.py` and, for language models,
`generate.py`, each rendered from `templates/train/` with the resolved `train:` section."""

from __future__ import annotations

from typing import Any

from nlc import __version__
from nlc.emit.render import format_python, render
from nlc.frontend.load import Spec
from nlc.frontend.train_ast import TrainSpec
from nlc.frontend.train_check import ADAPTERS, has_lora, resolve_parameters
from nlc.ir import Graph
from nlc.ir.types import DTYPES


def training_files(graph: Graph, spec: Spec) -> dict[str, str]:
    """Relative path -> text of the training modules of the package (deterministic)."""
    assert spec.ast.train is not None, "training_files needs a spec with a train section"
    train = resolve_parameters(spec.ast.train, graph)
    ctx = {
        "name": graph.name,
        "version": __version__,
        "config": repr(config(train)),
        "train": train,
        "trainable": trainable(graph, train),
        "input": _input(graph, train),
        "num_outputs": _num_outputs(graph),
        "checkpoint_modules": checkpoint_modules(graph, train.grad_checkpointing),
        "blocks": checkpoint_modules(graph, True),  # what FSDP shards one by one
        "fixed": fixed_keys(train),
    }
    modules = ["train", "data"]
    if train.task in ("lm", "mlm"):
        modules.append("generate")
    return {
        f"{graph.name}/{m}.py": format_python(render(f"train/{m}.py.j2", **ctx), f"{m}.py")
        for m in modules
    }


def config(train: TrainSpec) -> dict[str, Any]:
    """The CONFIG of train.py: the resolved section, less `iterative` (which `nlc train` runs)
    and the settings of features the spec does not use, so that their scripts stay as they were."""
    exclude: dict[str, Any] = {"iterative": True}
    exclude |= {k: True for k in ("trainable", "distill") if getattr(train, k) is None}
    if train.optimizer.lora_plus_ratio is None:
        exclude["optimizer"] = {"lora_plus_ratio"}
    return train.model_dump(mode="json", exclude=exclude)


def trainable(graph: Graph, train: TrainSpec) -> list[str] | None:
    """Globs of the parameters that train (the others are frozen), or None when all train: a
    LoRA model trains its adapters, and the parameters that `trainable:` names."""
    lora = ADAPTERS if has_lora(graph) else []
    if train.trainable is None and not lora:
        return None
    return [*lora, *(train.trainable or [])]


def _input(graph: Graph, train: TrainSpec) -> dict[str, Any]:
    """The model input's name, per-sample shape (no batch dim) and torch dtype name; the single
    input and its fixed sizes were checked with the train section (`train_check`)."""
    (node,) = graph.inputs
    shape = [train.data.seq_len] if train.task in ("lm", "mlm") else list(node.type.shape[1:])
    return {"name": node.name, "shape": shape, "dtype": DTYPES[node.type.dtype]}


def _num_outputs(graph: Graph) -> int:
    (value,) = graph.outputs.values()
    return graph.type_of(value).shape[-1]


def checkpoint_modules(graph: Graph, blocks: bool | list[str]) -> list[str]:
    """Module paths of the block instances to recompute in the backward pass: of every block
    (`True`) or of the named ones, outermost instances only, in graph order."""
    if blocks is False:
        return []
    wanted = None if blocks is True else set(blocks)
    paths: dict[str, None] = {}
    for node in graph:
        for frame in node.frames:
            if frame.block is not None and (wanted is None or frame.block in wanted):
                paths[frame.path] = None
                break
    return list(paths)


# Settings whose code the template emits only when the spec uses them: `--set` on the
# generated script cannot turn them on (or switch between variants) without a rebuild.
_ALWAYS_FIXED = (
    "task",
    "loss.kind",
    "optimizer.name",
    "optimizer.groups",
    "schedule.name",
    "distributed",
    "compile",
    "grad_checkpointing",
    "tracking.tensorboard",
    "tracking.mlflow",
)


def fixed_keys(train: TrainSpec) -> list[str]:
    """Config keys that the generated train.py refuses to override with `--set`."""
    fixed = list(_ALWAYS_FIXED)
    if train.precision in ("fp32", "bf16"):  # no autocast, or no gradient scaler
        fixed.append("precision")
    if train.accumulate == 1:
        fixed.append("accumulate")
    # Resolved into TRAINABLE and the optimizer's groups when the script is generated.
    fixed += ["trainable"] * (train.trainable is not None)
    fixed += ["optimizer.lora_plus_ratio"] * (train.optimizer.lora_plus_ratio is not None)
    for key, value in (
        ("clip_grad", train.clip_grad),
        ("early_stopping", train.early_stopping),
        ("checkpoint.every", train.checkpoint.every),
    ):
        if value is None:
            fixed.append(key)
    return fixed
