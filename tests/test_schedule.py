"""Iterative compression (`train.iterative`): the per-step amounts of the schedules, and
`nlc train` of a pipeline pruning cnn_digits' channels in two steps with fine-tuning between."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nlc.cli import app
from nlc.frontend.pass_ast import PassSpec
from nlc.frontend.train_ast import IterativeSpec
from nlc.train.schedule import reached, step_passes

ROOT = Path(__file__).resolve().parents[1]
CNN = yaml.safe_load((ROOT / "examples/cnn_digits.yaml").read_text())


def _passes(*items: dict) -> list[PassSpec]:
    return [PassSpec.model_validate(item) for item in items]


def _amounts(passes: list[PassSpec], it: IterativeSpec) -> list[list[tuple[str, object]]]:
    return [
        [
            (p.name, p.options.get("amount", p.options.get("sparsity")))
            for p in step_passes(passes, i, it)
        ]
        for i in range(1, it.steps + 1)
    ]


def test_linear_schedule_is_cumulative_and_relative_for_removed_channels():
    passes = _passes(
        {"pass": "channels", "amount": 0.6},
        {"pass": "prune", "sparsity": 0.9},
        {"pass": "svd", "rank": 0.5},
    )
    steps = _amounts(passes, IterativeSpec(steps=3))
    assert steps[0] == [("channels", 0.2), ("prune", 0.3), ("svd", None)]  # svd once, first
    assert [s[1] for s in steps[1:]] == [("prune", 0.6), ("prune", 0.9)]  # of the whole layer
    # channels: of the channels left, so that 1 - (1 - a1)(1 - a2)... = 0.2, 0.4, 0.6
    kept = 1.0
    for i, step in enumerate(steps, 1):
        kept *= 1 - step[0][1]
        assert 1 - kept == pytest.approx(0.2 * i, abs=1e-5)


def test_cubic_schedule_and_defaults():
    assert [reached(i, 4, "cubic") for i in range(5)] == [0, 0.578125, 0.875, 0.984375, 1]
    assert reached(2, 4, "linear") == 0.5
    it = IterativeSpec(steps=2, schedule="cubic")
    default = PassSpec.model_validate({"pass": "prune"})  # sparsity 0.5 by default
    assert _amounts([default], it) == [[("prune", 0.4375)], [("prune", 0.5)]]
    fixed = PassSpec.model_validate({"pass": "prune", "pattern": "2:4"})
    assert [len(s) for s in _amounts([fixed], it)] == [1, 0]  # a 2:4 pattern applies once


def test_two_steps_of_channel_pruning(builder, tmp_path: Path):
    doc = copy.deepcopy(CNN)
    doc["params"]["width"] = 8
    doc.pop("train")
    model = builder.write_spec(doc)
    torch.manual_seed(0)
    weights = tmp_path / "dense.pt"
    torch.save(builder.build(doc).load().Model().state_dict(), weights)
    pipe = {
        "nlc": 1,
        "model": str(model),
        "name": "pruned",
        "passes": [{"pass": "channels", "amount": 0.5}],
        "train": {"steps": 2, "eval_every": 2, "iterative": {"steps": 2}},
    }
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(pipe))
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "pipe.yaml"), "-o", str(run)]
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 2 and "needs its weights" in missing.output
    done = CliRunner().invoke(app, [*args, "--weights", str(weights)])
    assert done.exit_code == 0, done.output
    rows = json.loads((run / "summary.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["passes"][0]["amount"] for r in rows[1:]] == [0.25, pytest.approx(1 / 3, abs=1e-5)]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert all("val_accuracy" in r["final"] for r in rows[1:])
    for i in (1, 2):
        log = (run / f"step-{i}" / "train.log").read_text()
        assert f"initial weights: {run / f'step-{i}' / 'package' / 'weights.pt'}" in log
    final = torch.load(run / "package" / "weights.pt", weights_only=True)
    last = torch.load(run / "step-2/checkpoints/best.pt", weights_only=True)["model"]
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert (
        sum(v.numel() for k, v in final.items() if "running" not in k and "num_batches" not in k)
        == rows[2]["params"]
    )
