"""One trial of a search: a point of the space, its concrete spec, its cost, its constraints
and, when an objective needs it, its short training through the generated train.py.

The trial's folder `trials/<number>/` gets spec.yaml (the concrete spec), cost.json,
metrics.json and, for trained trials, the run files of `nlc train` (package/, train.log,
metrics.jsonl, summary.json, ...). A point that breaks a constraint or does not make a valid
graph is pruned before any training, with the reason in the trial's user attribute
`infeasible`; a trial whose training crashes fails with the error in `error`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import optuna

from nlc.errors import NlcError
from nlc.frontend.search_ast import SearchSpec
from nlc.search.objectives import Goals, cost_metrics
from nlc.search.space import Point, Space

POLL_S = 0.2  # how often a running training's metrics.jsonl is read


class TrialError(Exception):
    """The trial crashed (its training, or its proxies): the trial fails, the search goes on."""


@dataclass(frozen=True)
class Evaluator:
    space: Space
    settings: SearchSpec
    goals: Goals
    out: Path

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        try:
            point = self.space.suggest(trial)
            folder = self.out / "trials" / str(trial.number)
            if folder.exists():  # left by an interrupted trial of a deleted study
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            metrics = self.evaluate(trial, point, folder)
            values = [metrics[m.name] for m in self.goals.objectives]
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded on the trial, which fails; the search goes on
            message = e.message if isinstance(e, NlcError) else str(e)
            trial.set_user_attr(
                "error", message if isinstance(e, TrialError) else f"{type(e).__name__}: {message}"
            )
            raise
        return values[0] if len(values) == 1 else values

    def evaluate(self, trial: optuna.Trial, point: Point, folder: Path) -> dict[str, float]:
        from nlc.api import compress, write_build
        from nlc.frontend import lower
        from nlc.train.run import PACKAGE, prepare_run

        (folder / "spec.yaml").write_text(self.space.yaml(point, folder), encoding="utf-8")
        try:
            spec = self.space.spec(point)
            graph, _ = compress(spec, lower(spec), None)
        except NlcError as e:  # a conflicting combination of choices: nothing to train
            _infeasible(trial, f"invalid point: {e.message}")
        metrics: dict[str, float] = cost_metrics(graph, self.goals.costs)
        _write(folder / "cost.json", metrics)
        trial.set_user_attr("metrics", metrics)
        broken = [
            f"{c.text} ({c.metric.name} = {metrics[c.metric.name]:.4g})"
            for c in self.goals.constraints
            if not c.holds(metrics[c.metric.name])
        ]
        if broken:
            _infeasible(trial, "violates " + "; ".join(broken))
        seed = self.settings.seed + trial.number
        if self.goals.trains:  # checks the data and builds the package, once for both uses
            prepare_run(spec, graph, folder)
        elif self.goals.proxies:
            write_build(spec, graph, folder / PACKAGE, onnx=False)
        if self.goals.proxies:
            metrics |= self._proxies(spec, graph, folder / PACKAGE, seed)
        if self.goals.trains:
            metrics |= self._train(trial, spec, graph, folder, seed)
        _write(folder / "metrics.json", metrics)
        trial.set_user_attr("metrics", metrics)
        return metrics

    def _proxies(self, spec: Any, graph: Any, package: Path, seed: int) -> dict[str, float]:
        from nlc.search.proxies import run_proxies

        node = graph.inputs[0]
        shape = [d if isinstance(d, int) else 1 for d in node.type.shape[1:]]
        try:
            return run_proxies(package, graph.name, shape, self.goals.proxies, seed, spec.data_root)
        except RuntimeError as e:
            raise TrialError(f"proxies failed: {e}") from None

    def _train(
        self, trial: optuna.Trial, spec: Any, graph: Any, folder: Path, seed: int
    ) -> dict[str, float]:
        """Train with the budget; report the first objective's curve to the pruner (single
        objective only: Optuna prunes single-objective studies); the final val metrics."""
        from nlc.train.run import PACKAGE, train_command

        budget = self.settings.budget
        sets = [f"seed={seed}"]
        if budget.steps:
            sets.append(f"steps={budget.steps}")
        elif budget.epochs:
            sets += [f"epochs={budget.epochs}", "steps=None"]
        command = train_command(spec, graph, folder, False, False, 1)
        command += [arg for s in sets for arg in ("--set", s)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        package = str((folder / PACKAGE).resolve())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
        watched = self.goals.objectives[0].name
        prune = len(self.goals.objectives) == 1 and self.settings.pruner != "none"
        curve = _Curve(folder / "metrics.jsonl")
        start, timed_out = time.monotonic(), False
        with open(folder / "train.err", "w", encoding="utf-8") as errors:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
            try:
                while process.poll() is None:
                    time.sleep(POLL_S)
                    for step, value in curve.read(watched):
                        if prune:
                            trial.report(value, step)
                            if trial.should_prune():
                                raise optuna.TrialPruned(f"pruned at step {step}: {value:.4g}")
                    if budget.seconds and time.monotonic() - start > budget.seconds:
                        timed_out = True
                        break
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        curve.read(watched)
        if timed_out:
            missing = self._missing(curve.last)
            if missing:
                _infeasible(trial, f"no {missing} within the budget of {budget.seconds:g} s")
            return curve.last
        if process.returncode:
            lines = (folder / "train.err").read_text(encoding="utf-8").strip().splitlines()
            raise TrialError(
                f"training exited with status {process.returncode}: "
                + (lines[-1] if lines else "no error output")
            )
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        final = {k: float(v) for k, v in (summary.get("final") or {}).items()}
        metrics = curve.last | final
        missing = self._missing(metrics)
        if missing:
            raise TrialError(f"training logged no {missing}")
        return metrics

    def _missing(self, metrics: dict[str, float]) -> str:
        """The validation objectives `metrics` lacks, comma-separated ('' when none)."""
        wanted = [m.name for m in self.goals.objectives if m.kind == "val"]
        return ", ".join(name for name in wanted if name not in metrics)


class _Curve:
    """The validation rows of a growing metrics.jsonl, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.last = path, 0, {}

    def read(self, key: str) -> list[tuple[int, float]]:
        """New (step, value) pairs of `key`; complete lines only (the writer may be mid-line)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            text = f.read()
        end = text.rfind("\n") + 1
        self.offset += len(text[:end].encode("utf-8"))
        found = []
        for line in text[:end].splitlines():
            row = json.loads(line)
            vals = {k: float(v) for k, v in row.items() if k.startswith("val_")}
            self.last |= vals
            if key in vals:
                found.append((int(row.get("step", 0)), vals[key]))
        return found


def _infeasible(trial: optuna.Trial, reason: str) -> NoReturn:
    trial.set_user_attr("infeasible", reason)
    raise optuna.TrialPruned(reason)


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
