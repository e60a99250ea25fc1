"""Iterative compression (`train.iterative`): a pipeline's passes spread over several steps,
each followed by fine-tuning, each step starting from the previous one's trained weights.

A pass with an amount (`channels`' amount, `prune`'s sparsity) reaches its target over the
steps: after step i of n, target x i / n (linear) or target x (1 - (1 - i / n)^3) (cubic,
Zhu & Gupta 2017) of the *original* model. `channels` removes channels physically, so its step
amount is the fraction of the channels left that must go. Passes without an amount (svd rank,
lora, ...) apply once, at the first step. Unstructured `prune` zeros weights that fine-tuning
may grow back: after the last fine-tuning the final package is pruned to the target once more.

RUN/step-<i>/ holds each step's run (package, checkpoints, metrics), RUN/summary.json the
per-step table, RUN/package the final package and its weights.pt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlc.errors import NlcError
from nlc.frontend.load import Spec, load_spec
from nlc.frontend.pass_ast import PassSpec
from nlc.frontend.train_ast import IterativeSpec
from nlc.weights import Weights, check_weights, read_weights

# Passes whose amount the schedule scales: the option, and whether the pass removes what it
# prunes from the graph (so that a later step's amount is relative to what is left).
SCALABLE = {"channels": ("amount", True), "prune": ("sparsity", False)}


def reached(i: int, n: int, schedule: str) -> float:
    """The fraction of the target amount reached after step i of n."""
    done = i / n
    return done if schedule == "linear" else 1 - (1 - done) ** 3


def step_passes(passes: list[PassSpec], i: int, it: IterativeSpec) -> list[PassSpec]:
    """The passes of step i (1-based): scaled amounts; unscalable passes at step 1 only."""
    from nlc.passes import PASSES

    out = []
    for p in passes:
        if p.name not in SCALABLE or p.name not in PASSES:
            if i == 1:
                out.append(p)
            continue
        key, removes = SCALABLE[p.name]
        target = p.options.get(key, PASSES[p.name].Options.model_fields[key].default)
        now, before = (target * reached(k, it.steps, it.schedule) for k in (i, i - 1))
        amount = 1 - (1 - now) / (1 - before) if removes else now
        if p.options.get("pattern", "none") != "none":  # a fixed pattern (2:4) does not scale
            if i == 1:
                out.append(p)
            continue
        out.append(p.model_copy(update={key: round(amount, 6)}))
    return out


def train_iterative(
    spec_path: Path,
    overrides: dict[str, Any],
    cli_passes: list[tuple[str, dict[str, Any]]],
    weights_path: Path | None,
    run: Path,
    nproc: int,
) -> int:
    """Run the steps of `train.iterative` into `run`; the exit status of the first failed
    fine-tuning, or 0."""
    from nlc.api import compress, write_build
    from nlc.frontend.lower import lower
    from nlc.train.run import PACKAGE, prepare_run, run_script, train_command

    spec = load_spec(spec_path, overrides)
    graph = lower(spec)
    train = spec.ast.train
    assert train is not None and train.iterative is not None
    it = train.iterative
    passes = [*spec.ast.passes]
    passes += [PassSpec.model_validate({"pass": n, **o}) for n, o in cli_passes]
    if not passes:
        raise NlcError(
            "train.iterative spreads the passes over steps, but there are none",
            train.key_at("iterative"),
            "add `passes:` to the pipeline, e.g. [{pass: channels, amount: 0.5}], or --pass",
        )
    if weights_path is None:
        raise NlcError(
            "train.iterative compresses a trained model: it needs its weights",
            train.key_at("iterative"),
            "pass --weights RUN (the run folder of the trained model) or a .pt file",
        )
    weights: Weights | None = read_weights(weights_path)
    check_weights(weights, graph, f"the weights of {weights_path}")
    tune = {"iterative": None} | ({"epochs": it.epochs, "steps": None} if it.epochs else {})
    spec.ast.train = train.model_copy(update=tune)
    dense, dense_weights = graph, weights
    rows: list[dict[str, Any]] = [{"step": 0, "params": graph.num_params()}]
    trained = weights_path / "summary.json"  # the run the weights come from, if a run folder
    if trained.is_file():
        rows[0] |= {k: json.loads(trained.read_text()).get(k) for k in ("best", "final")}
    step_spec = spec
    for i in range(1, it.steps + 1):
        step_spec = _with_passes(spec, step_passes(passes, i, it))
        graph, weights = compress(step_spec, graph, weights)
        graph.meta["dense"], graph.meta["dense_weights"] = dense, dense_weights
        folder = run / f"step-{i}"
        prepare_run(step_spec, graph, folder, weights=weights)
        code = run_script(folder, train_command(step_spec, graph, folder, False, False, nproc))
        if code:
            return code
        weights = read_weights(folder)
        summary = json.loads((folder / "summary.json").read_text())
        rows.append(_row(i, step_spec, graph.num_params(), summary))
        rows[-1]["reached"] = round(reached(i, it.steps, it.schedule), 6)  # of each target
        _write_summary(run, it, rows)
    final = _with_passes(spec, [p for p in passes if p.name == "prune"])
    graph, weights = compress(final, graph, weights)  # fine-tuning regrew pruned weights
    graph.meta["dense"], graph.meta["dense_weights"] = dense, dense_weights
    write_build(step_spec, graph, run / PACKAGE, onnx=False, weights=weights)
    return 0


def _with_passes(spec: Spec, passes: list[PassSpec]) -> Spec:
    data = {**spec.data, "passes": [p.model_dump(by_alias=True) for p in passes]}
    return Spec(spec.ast.model_copy(update={"passes": passes}), spec.path, data, spec.root)


def _row(i: int, spec: Spec, params: int, summary: dict[str, Any]) -> dict[str, Any]:
    amounts = [
        {"pass": p.name, SCALABLE[p.name][0]: p.options.get(SCALABLE[p.name][0])}
        if p.name in SCALABLE
        else {"pass": p.name}
        for p in spec.ast.passes
    ]
    return {
        "step": i,
        "passes": amounts,
        "params": params,
        "best": summary["best"],
        "final": summary["final"],
    }


def _write_summary(run: Path, it: IterativeSpec, rows: list[dict[str, Any]]) -> None:
    doc = {"schedule": it.schedule, "steps": it.steps, "rows": rows}
    (run / "summary.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
