"""Batches of a spec's training data, read through a built package's own data module, and its
task loss as train.py computes it: what int8-static calibration, Taylor importance and the
DARTS supernet run on, so they see what training saw."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def train_batches(
    package: ModuleType, data_root: Path, count: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], SimpleNamespace, dict[str, Any]]:
    """Up to `count` (inputs, targets) batches of at most the train section's batch size,
    drawn without repeats from a fixed shuffle of the training split; with the package's
    config and its data facts (`vocab_size`, `mask_id`, ...). `package` is an imported build
    that has a train section (`nlc.emit.onnx.imported_package`)."""
    import torch
    from torch.utils.data import default_collate

    train = __import__(f"{package.__name__}.train", fromlist=["CONFIG"])
    data = __import__(f"{package.__name__}.data", fromlist=["datasets"])
    cfg = train.namespace(train.CONFIG)
    with tempfile.TemporaryDirectory() as run:
        data.prepare(cfg, data_root, Path(run))
        train_set, _, info = data.datasets(cfg, data_root, Path(run))
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
        size = min(cfg.batch_size, len(train_set) // count) or 1
        batches = [
            default_collate([train_set[int(i)] for i in order[k * size : (k + 1) * size]])
            for k in range(min(count, len(train_set)))
        ]
    return [(x, y) for x, y in batches], cfg, info


def task_loss(
    task: str, kind: str, label_smoothing: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The train section's loss of (outputs, targets): cross-entropy over the classes (per
    token for lm and mlm), else `kind` (l1 or mse) on the targets' shape."""
    import torch.nn.functional as F

    if task in ("lm", "mlm"):
        return lambda out, y: F.cross_entropy(
            out.flatten(0, -2).float(), y.flatten(), label_smoothing=label_smoothing
        )
    if task == "classification":
        return lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    distance = F.l1_loss if kind == "l1" else F.mse_loss
    return lambda out, y: distance(out.reshape(y.shape).float(), y.float())
