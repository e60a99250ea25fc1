"""What a search leaves in its folder, from the study alone (so `nlc search status` can redo
it): pareto.json, pareto.md, front/<n>.yaml (one buildable spec per front member, sorted by
the first objective), best.yaml (one objective), plots/trials.png and plots/front.png.

The hypervolume (1 or 2 objectives) is that of the front against a reference point: for each
objective, the bound of a constraint on the same metric when there is one, else the worst
value among the completed trials."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nlc.search.objectives import Goals
from nlc.search.pareto import Vector, front, hypervolume, minimized
from nlc.search.progress import fmt
from nlc.search.space import Space


def front_trials(study: optuna.Study, goals: Goals) -> list[FrozenTrial]:
    """The completed trials on the Pareto front, by their first objective (best first)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = [minimized(t.values, goals.directions) for t in complete]
    members = [complete[i] for i in front(points)]
    return sorted(members, key=lambda t: minimized(t.values, goals.directions))


def reference(study: optuna.Study, goals: Goals) -> Vector | None:
    """The hypervolume's reference point (minimized), None before any completed trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    points = [minimized(t.values, goals.directions) for t in complete]
    ref = [max(p[k] for p in points) for k in range(len(goals.objectives))]
    for c in goals.constraints:  # a bound on an objective is its worst acceptable value
        for k, (m, direction) in enumerate(zip(goals.objectives, goals.directions, strict=True)):
            if c.metric == m and direction == "minimize" and c.op in ("<=", "<"):
                ref[k] = c.value
            elif c.metric == m and direction == "maximize" and c.op in (">=", ">"):
                ref[k] = -c.value
    return tuple(ref)


def summary(study: optuna.Study, goals: Goals, ref: Vector | None = None) -> dict[str, Any]:
    """The content of pareto.json: trial counts, the front and its hypervolume."""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        state = _state(t)
        if state != "surplus":  # a racing worker's extra trial: never evaluated
            states[state] = states.get(state, 0) + 1
    members = front_trials(study, goals)
    ref = ref if ref is not None else reference(study, goals)
    volume = None
    if ref is not None and len(ref) <= 2:
        volume = hypervolume([minimized(t.values, goals.directions) for t in members], ref)
    return {
        "study": study.study_name,
        "objectives": [
            {"metric": m.name, "direction": d}
            for m, d in zip(goals.objectives, goals.directions, strict=True)
        ],
        "constraints": [c.text for c in goals.constraints],
        "trials": states,
        "reference": list(ref) if ref is not None else None,
        "hypervolume": volume,
        "front": [
            {
                "trial": t.number,
                "values": dict(zip((m.name for m in goals.objectives), t.values, strict=True)),
                "metrics": t.user_attrs.get("metrics", {}),
                "point": t.params,
            }
            for t in members
        ],
    }


def _state(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if trial.state == TrialState.FAIL:
        return "crashed" if "error" in attrs else "surplus" if "surplus" in attrs else "interrupted"
    if trial.state == TrialState.PRUNED and "infeasible" in attrs:
        return "infeasible"
    return trial.state.name.lower()


def table(data: dict[str, Any], goals: Goals) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the front: objectives, latency per named target, params, MACs,
    accuracy."""
    names = [m.name for m in goals.objectives]
    extra = [m.name for m in goals.costs if m.kind == "latency" and m.name not in names]
    extra += [n for n in ("params", "macs", "val_accuracy") if n not in names]
    headers = ["#", "trial", *names, *extra]
    rows = []
    for n, member in enumerate(data["front"]):
        metrics = member["metrics"]
        cells = [member["values"][k] for k in names] + [metrics.get(k) for k in extra]
        rows.append([str(n), str(member["trial"]), *("-" if v is None else fmt(v) for v in cells)])
    return headers, rows


def markdown(data: dict[str, Any], goals: Goals) -> str:
    headers, rows = table(data, goals)
    counts = ", ".join(f"{v} {k}" for k, v in data["trials"].items())
    lines = [f"# Search {data['study']}", "", f"Trials: {counts}."]
    if data["hypervolume"] is not None:
        ref = ", ".join(fmt(v) for v in data["reference"])
        lines.append(f"Hypervolume {fmt(data['hypervolume'])} (reference, minimized: {ref}).")
    lines += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Specs: `front/<#>.yaml` (`nlc build front/0.yaml -o build/best`)."]
    return "\n".join(lines) + "\n"


def write_outputs(study: optuna.Study, space: Space, goals: Goals, out: Path) -> dict[str, Any]:
    """Write the outputs of the study into `out`; the pareto.json content."""
    data = summary(study, goals)
    (out / "pareto.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    (out / "pareto.md").write_text(markdown(data, goals), encoding="utf-8")
    folder = out / "front"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for n, member in enumerate(data["front"]):
        (folder / f"{n}.yaml").write_text(space.yaml(member["point"], folder), encoding="utf-8")
    best = out / "best.yaml"
    if len(goals.objectives) == 1 and data["front"]:
        best.write_text(space.yaml(data["front"][0]["point"], out), encoding="utf-8")
    plot(study, goals, data, out / "plots")
    return data


def plot(study: optuna.Study, goals: Goals, data: dict[str, Any], folder: Path) -> None:
    """plots/trials.png (every completed trial) and plots/front.png (the front), accuracy
    against latency when the objectives have both; nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    names = [m.name for m in goals.objectives]
    x_of, y_of, x_name, y_name = _axes(names)
    folder.mkdir(exist_ok=True)
    for name, trials in (("trials", complete), ("front", None)):
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [x_of(t.number, t.values) for t in complete]
        ys = [y_of(t.number, t.values) for t in complete]
        ax.scatter(xs, ys, s=14, alpha=0.5 if trials is None else 0.8, label="trials")
        if trials is None:
            members = sorted(
                (x_of(m["trial"], values), y_of(m["trial"], values), m["trial"])
                for m in data["front"]
                for values in [list(m["values"].values())]
            )
            fx, fy = [m[0] for m in members], [m[1] for m in members]
            ax.step(fx, fy, "o-", where="post", color="C3", label="front")
            for x, y, number in members:
                ax.annotate(str(number), (x, y), fontsize=7)
        ax.set_xlabel(x_name)
        ax.set_ylabel(y_name)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=100)
        plt.close(fig)


def _axes(names: list[str]):
    """x and y of a trial for the plots: (latency, accuracy) where both are objectives, the
    first two objectives otherwise, (trial number, objective) for one."""
    if len(names) == 1:
        return (lambda n, v: n), (lambda n, v: v[0]), "trial", names[0]
    x = next((i for i, n in enumerate(names) if n.startswith("latency")), 1)
    y = next((i for i, n in enumerate(names) if n.startswith("val_")), 0 if x else 1)
    return (lambda n, v: v[x]), (lambda n, v: v[y]), names[x], names[y]
