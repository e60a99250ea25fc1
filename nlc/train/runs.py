"""`nlc runs`: the training runs under a folder side by side, with the settings that differ."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlc.errors import NlcError


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened: "optimizer.lr" -> 0.001
    summary: dict[str, Any]  # summary.json, or {} while running or after a kill


def find_runs(folder: Path) -> list[Run]:
    """The run at `folder`, or the runs in its subfolders (any depth), sorted by path."""
    if not folder.is_dir():
        raise NlcError(f"{folder} is not a folder", None, "give the folder that holds the runs")
    configs = [folder / "config.json"] if (folder / "config.json").is_file() else []
    configs = configs or sorted(folder.glob("**/config.json"))
    runs = [
        Run(c.parent, flatten(_json(c)), _json(c.parent / "summary.json"))
        for c in configs
        if c.parent.name != "package"
    ]
    if not runs:
        raise NlcError(
            f"no training runs under {folder}",
            None,
            "a run folder is what `nlc train -o DIR` writes (it holds config.json)",
        )
    return runs


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """
    >>> flatten({"optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}, "epochs": 3})
    {'optimizer.lr': 0.1, 'optimizer.betas': [0.9, 0.99], 'epochs': 3}
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing(runs: list[Run]) -> list[str]:
    """The config keys whose values are not the same in every run.

    >>> a, b = Run(Path("a"), {"lr": 1, "seed": 0}, {}), Run(Path("b"), {"lr": 2, "seed": 0}, {})
    >>> differing([a, b])
    ['lr']
    """
    keys = dict.fromkeys(k for run in runs for k in run.config)
    return [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]


def table(runs: list[Run], root: Path) -> list[dict[str, str]]:
    """One row per run: its name, status, steps, best metric, final validation metrics, wall
    time, and the settings that differ between the runs."""
    keys = differing(runs)
    finals = list(dict.fromkeys(k for r in runs for k in r.summary.get("final", {})))
    rows = []
    for run in runs:
        s = run.summary
        best = s.get("best") or {}
        row = {
            "run": str(run.path.relative_to(root)) if run.path != root else run.path.name,
            "status": s.get("status", "running or killed"),
            "steps": str(s.get("steps", "")),
            "best": f"{best['metric']} {_number(best['value'])}" if "value" in best else "",
        }
        row |= {k: _number(s.get("final", {}).get(k)) for k in finals}
        row["time"] = f"{s['wall_time_s']:.0f}s" if "wall_time_s" in s else ""
        rows.append(row | {k: _value(run.config.get(k)) for k in keys})
    return rows


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _value(value: Any) -> str:
    return _number(value) if not isinstance(value, (list, dict)) else json.dumps(value)
