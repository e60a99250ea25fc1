"""Gradients of the training loss with respect to a model's weights, on a few batches of its
training data: what Taylor importance (the `channels` pass, `importance: taylor`) scores with.

The graph is built into a throwaway package, whose own data module gives the batches
(`nlc.emit.batches`); the loss is the train section's task loss as train.py computes it,
without label smoothing or distillation: the loss whose change the Taylor expansion estimates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nlc.ir import Graph
from nlc.weights import Weights

if TYPE_CHECKING:
    import torch

    from nlc.frontend.load import Spec

BATCHES = 8  # Molchanov et al. average a few mini-batches; 8 of batch_size rank channels stably


def loss_gradients(spec: Spec, graph: Graph, weights: Weights, batches: int = BATCHES) -> Weights:
    """Per parameter of `graph` (tied names too), the gradient of the task loss on each of
    `batches` batches of the training split, stacked on a new first dim: [batches, *shape].
    The model runs in eval mode (running norm statistics, no dropout), so the result is
    deterministic. The spec must have a train section."""
    import torch

    from nlc.emit.batches import task_loss, train_batches
    from nlc.emit.onnx import imported_package
    from nlc.emit.package import write_package

    train = spec.ast.train
    assert train is not None
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_package(graph, spec, Path(tmp) / "package")
        with imported_package(folder, graph.name) as package:
            data, _, info = train_batches(package, spec.data_root, batches)
            script = __import__(f"{package.__name__}.train", fromlist=["CONFIG"])
            model = package.Model().eval()
    model.load_state_dict(weights)
    params = dict(model.named_parameters(remove_duplicate=False))
    for p in params.values():
        p.requires_grad_(True)
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    loss = task_loss(train.task, train.loss.kind)  # no smoothing: the loss Taylor estimates
    generator = torch.Generator().manual_seed(0)  # mlm: the same masks on every call
    for x, y in data:
        if train.task == "mlm":
            x, y = script.mask_tokens(
                x, train.mask_rate, info["mask_id"], info["vocab_size"], generator
            )
        model.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        for name, p in params.items():
            grads[name].append(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
    return {name: torch.stack(g) for name, g in grads.items()}
