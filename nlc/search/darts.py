"""DARTS (Liu et al. 2019), first order, for the op choices of a search space.

The supernet (`nlc.search.supernet`) is built like any spec and trained through its generated
package (its `Model`, its `data.py`, its train.py's optimizer and schedule). As in the paper,
the training split is halved: the weights learn on one half with the architecture weights
frozen, then the architecture weights (Adam, `arch_lr`) on the other half with the weights
frozen, alternately; the validation split stays unseen and measures the supernet. The
architecture loss adds `latency_weight` x the expected latency in ms on the space's first
target: for each op choice, sum_i softmax(alpha)_i x latency_i, latency_i the cost model's time
of option i's nodes in the supernet, so the term is differentiable in alpha. The derived point
takes each op choice's option of largest alpha; the other dims stay at their base values
(`nlc.search.supernet.base_values`).
"""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nlc.emit.batches import task_loss
from nlc.errors import NlcError
from nlc.frontend.search_ast import DartsSpec
from nlc.search.space import Point, Space
from nlc.search.supernet import Choice, Supernet, build_supernet, point_of

Log = Callable[[str], None]
RESULT_FILE = "darts.json"
LOG_FILE = "train.log"
TASKS = ("classification", "regression")


@dataclass
class _Arch:
    """The architecture weights: one `alpha` per op choice, shared by its mixed nodes, and the
    latency (ms) of each option summed over those nodes."""

    choices: list[Choice]
    alphas: list[nn.Parameter]
    latency: list[torch.Tensor]

    def expected_latency(self) -> torch.Tensor:
        return sum(
            (F.softmax(a, 0) @ lat for a, lat in zip(self.alphas, self.latency, strict=True)),
            torch.zeros(()),
        )

    def weights(self) -> dict[str, list[float]]:
        return {
            c.dim.name: [round(w, 4) for w in F.softmax(a.detach(), 0).tolist()]
            for c, a in zip(self.choices, self.alphas, strict=True)
        }


def derive(
    space: Space,
    out: Path,
    log: Log | None = None,
    settings: DartsSpec | None = None,
    fixed: Point | None = None,
) -> Point:
    """Search the op choices of `space` with DARTS; the derived point. `out` gets
    supernet.yaml, the supernet's run folder (its data split and train.log) and darts.json:
    the settings, each option's latency, alphas per epoch, the derived point and the
    supernet's validation figures. `fixed` sets dims other than op choices (default:
    `base_values`); `settings` default to the space's `search.darts`."""
    settings = settings or space.search.darts
    out = Path(out)
    net = build_supernet(space, out, fixed)
    train = net.spec.ast.train
    if train is None or train.task not in TASKS:
        raise NlcError(
            "darts trains the supernet with the spec's train section, a classification or "
            "regression task",
            net.spec.ast.at("train") if train else space.search.at("strategy"),
            "add `train:` with task classification (the default) or regression",
        )
    from nlc.api import write_build
    from nlc.emit.onnx import imported_package

    run = out / "supernet"
    write_build(net.spec, net.graph, run / "package", onnx=False)
    latency = _latencies(net, settings)
    with (
        imported_package(run / "package", net.graph.name) as package,
        (run / LOG_FILE).open("w", encoding="utf-8") as file,
    ):

        def say(message: str) -> None:
            file.write(message + "\n")
            file.flush()
            if log:
                log(message)

        result = _search(net, package, run, latency, settings, say)
        best = {c.dim.name: c.options[i] for c, i in result.pop("argmax").items()}
        point = point_of(space, {**net.values, **best})
        say("darts derived: " + space.describe(point))
    result["derived"] = point
    (out / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return point


def _latencies(net: Supernet, settings: DartsSpec) -> list[list[float]]:
    """Per op choice, per option: ms on the first target, summed over the choice's mixed nodes
    (zeros without a target, which only a zero latency_weight allows)."""
    from nlc.analysis.cost import analyze
    from nlc.api import _spec_targets

    ast = net.spec.ast
    if not ast.targets:
        if settings.latency_weight:
            raise NlcError(
                "darts: latency_weight needs a target whose latency it weighs",
                ast.at("name"),
                "add `targets: [cpu]` (or another target) to the spec",
            )
        return [[0.0] * len(c.options) for c in net.choices]
    sizes = {s: ast.dims.get(s, 1) for s in net.graph.meta["symbols"]}
    times = {
        n.name: n.time.total * 1e3
        for n in analyze(net.graph, _spec_targets(net.spec)[0], sizes).nodes
    }
    return [
        [
            sum(times.get(name, 0.0) for per_node in c.candidates for name in per_node[i])
            for i in range(len(c.options))
        ]
        for c in net.choices
    ]


def _search(
    net: Supernet,
    package: ModuleType,
    run: Path,
    latency: list[list[float]],
    settings: DartsSpec,
    say: Log,
) -> dict[str, Any]:
    script = importlib.import_module(f"{package.__name__}.train")
    data = importlib.import_module(f"{package.__name__}.data")
    cfg = script.namespace(script.load_config([]))
    root = net.spec.data_root
    data.prepare(cfg, root, run)
    train_set, val_set, _ = data.datasets(cfg, root, run)
    torch.manual_seed(cfg.seed)
    model = package.Model()
    arch = _share(model, net.choices, latency)
    arch_ids = {id(a) for a in arch.alphas}
    groups = [
        {**g, "params": [p for p in g["params"] if id(p) not in arch_ids]}
        for g in script.parameter_groups(model, cfg.optimizer)
    ]
    weights_opt = script.make_optimizer([g for g in groups if g["params"]], cfg.optimizer)
    # The paper's architecture optimizer: Adam, betas (0.5, 0.999), weight decay 1e-3.
    arch_opt = torch.optim.Adam(arch.alphas, settings.arch_lr, (0.5, 0.999), weight_decay=1e-3)
    halves = _halves(train_set, cfg.seed)
    loaders = [_loader(h, cfg.batch_size, cfg.seed + i) for i, h in enumerate(halves)]
    steps = settings.epochs * len(loaders[0])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        weights_opt, script.lr_schedule(cfg.schedule, steps)
    )
    loss_fn = task_loss(cfg.task, cfg.loss.kind, cfg.loss.label_smoothing)
    say(
        f"darts: supernet of {len(net.choices)} op choice(s), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(halves[0])} samples train the weights, {len(halves[1])} the architecture, "
        f"{len(val_set)} validate"
    )
    for c, lat in zip(net.choices, latency, strict=True):
        listed = ", ".join(f"{o} {ms:.4g}" for o, ms in zip(c.options, lat, strict=True))
        say(f"  {c.dim.name}: latency ms {listed}")
    epochs: list[dict[str, Any]] = []
    for epoch in range(settings.epochs):
        model.train()
        total = 0.0
        for (x, y), (xa, ya) in zip(loaders[0], itertools.cycle(loaders[1]), strict=False):
            arch_opt.zero_grad()
            arch_loss = loss_fn(model(xa), ya)
            if settings.latency_weight:
                arch_loss = arch_loss + settings.latency_weight * arch.expected_latency()
            arch_loss.backward()
            arch_opt.step()
            weights_opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if cfg.clip_grad:  # the weights' gradients only: the alphas have their own step
                params = [p for group in weights_opt.param_groups for p in group["params"]]
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            weights_opt.step()
            schedule.step()
            total += loss.item()
        row = {
            "epoch": epoch + 1,
            "train_loss": round(total / max(1, len(loaders[0])), 5),
            **_evaluate(model, val_set, cfg, loss_fn),
            "expected_latency_ms": round(float(arch.expected_latency().detach()), 5),
            "alphas": arch.weights(),
        }
        epochs.append(row)
        figures = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("epoch", "alphas"))
        say(f"darts epoch {epoch + 1}/{settings.epochs}: {figures}")
    last = epochs[-1]
    return {
        "settings": settings.model_dump(),
        "latency_ms": {
            c.dim.name: dict(zip(c.options, lat, strict=True))
            for c, lat in zip(net.choices, latency, strict=True)
        },
        "epochs": epochs,
        "weights": {
            c.dim.name: dict(zip(c.options, last["alphas"][c.dim.name], strict=True))
            for c in net.choices
        },
        "supernet": {k: v for k, v in last.items() if k.startswith("val_")},
        "argmax": {
            c: int(a.detach().argmax()) for c, a in zip(net.choices, arch.alphas, strict=True)
        },
    }


def _share(model: nn.Module, choices: list[Choice], latency: list[list[float]]) -> _Arch:
    """One alpha per op choice: its mixed nodes' modules all hold the first one's."""
    alphas = []
    for c in choices:
        first = model.get_submodule(c.nodes[0]).alpha
        for name in c.nodes[1:]:
            model.get_submodule(name).alpha = first
        alphas.append(first)
    return _Arch(choices, alphas, [torch.tensor(lat) for lat in latency])


def _halves(dataset: Any, seed: int) -> tuple[Any, Any]:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = len(order) // 2
    return torch.utils.data.Subset(dataset, order[:cut]), torch.utils.data.Subset(
        dataset, order[cut:]
    )


def _loader(dataset: Any, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(dataset))
    return torch.utils.data.DataLoader(
        dataset, batch_size=size, shuffle=True, drop_last=True, generator=generator
    )


@torch.no_grad()
def _evaluate(model: nn.Module, val_set: Any, cfg: Any, loss_fn) -> dict[str, float]:
    model.eval()
    if not len(val_set):
        return {}
    loss = hits = count = 0.0
    for x, y in torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size):
        out = model(x)
        loss += float(loss_fn(out, y)) * len(y)
        if cfg.task == "classification":
            hits += float((out.argmax(-1) == y).sum())
        count += len(y)
    figures = {"val_loss": round(loss / count, 5)}
    if cfg.task == "classification":
        figures["val_accuracy"] = round(hits / count, 5)
    return figures
