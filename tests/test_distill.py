"""Distillation (`train.distill`): the KD loss of the generated train.py against a hand
computation, `nlc train` of a pruned student from a trained teacher, and the checks."""

from __future__ import annotations

import copy
import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sklearn.datasets import load_digits
from test_train_script import ruff_check
from typer.testing import CliRunner

from nlc.cli import app
from nlc.errors import NlcError

ROOT = Path(__file__).resolve().parents[1]
CNN = yaml.safe_load((ROOT / "examples/cnn_digits.yaml").read_text())


def _doc(name: str, train: dict | None = None, **params) -> dict:
    doc = copy.deepcopy(CNN)
    doc["name"], doc["params"] = name, {**doc["params"], "width": 8, **params}
    doc["train"] = train if train is not None else {"steps": 4}
    return doc


@pytest.fixture(scope="module")
def teacher(builder, tmp_path_factory) -> tuple[Path, Path]:
    """A cnn_digits teacher spec and its weights, trained in-process for a few seconds."""
    built = builder.build(_doc("teacher", width=16))
    torch.manual_seed(0)
    model = built.load().Model()
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(digits.target)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(60):
        batch = torch.arange(step * 64, step * 64 + 64) % len(y)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(-1) == y).float().mean() > 0.8
    weights = tmp_path_factory.mktemp("teacher") / "weights.pt"
    torch.save(model.state_dict(), weights)
    return built.spec.path, weights


def _distill(teacher: tuple[Path, Path], **options) -> dict:
    return {"teacher": str(teacher[0]), "weights": str(teacher[1]), **options}


def test_kd_loss_matches_a_hand_computation(builder, teacher):
    built = builder.build(_doc("kd_unit", {"steps": 4, "distill": _distill(teacher)}))
    sys.path.insert(0, str(built.root))
    try:
        train = importlib.import_module(f"{built.name}.train")
    finally:
        sys.path.remove(str(built.root))
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher_logits = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher_logits, strict=True):
        p = [math.exp(v / temperature) for v in t_row]
        q = [math.exp(v / temperature) for v in s_row]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = expected / len(student) * temperature**2
    got = train.distill_loss(torch.tensor(student), torch.tensor(teacher_logits), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Language models: [B, T, vocab] logits, averaged over every token.
    lm = train.distill_loss(torch.tensor([student]), torch.tensor([teacher_logits]), temperature)
    assert lm.item() == pytest.approx(expected, rel=1e-6)
    assert train.distill_loss(torch.tensor(student), torch.tensor(student), 4.0).item() == 0
    assert ruff_check(built.root) == ""


def test_pruned_student_distills_from_trained_teacher(builder, teacher, tmp_path: Path):
    """`nlc train PIPE --weights TEACHER`: the student is the teacher pruned to half its
    channels, fine-tuned with distillation; the log and metrics show the KD loss."""
    model = builder.write_spec(_doc("student", width=16))
    pipe = {
        "nlc": 1,
        "model": str(model),
        "passes": [{"pass": "channels", "amount": 0.5}],
        "train": {
            "steps": 4,
            "log_every": 2,
            "eval_every": 4,
            "distill": _distill(teacher, temperature=3.0, alpha=0.8),
        },
    }
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(pipe))
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "pipe.yaml"), "--weights", str(teacher[1]), "-o", str(run)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kd = [row["train_kd_loss"] for row in rows if "train_kd_loss" in row]
    assert len(kd) == 2 and all(v > 0 for v in kd)
    log = (run / "train.log").read_text()
    assert "teacher: " in log and "temperature 3, alpha 0.8" in log
    assert (run / "teacher" / "weights.pt").is_file()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_errors(builder, teacher, tmp_path: Path):
    wrong = builder.write_spec(_doc("five", num_classes=5))
    with pytest.raises(NlcError, match=r"teacher's output .* does not match the student's"):
        builder.build(_doc("s1", {"distill": _distill((wrong, teacher[1]))}))
    with pytest.raises(NlcError, match="does not exist"):
        builder.build(_doc("s2", {"distill": {"teacher": str(tmp_path / "nope.yaml")}}))
    with pytest.raises(NlcError, match="its trained weights are needed"):
        builder.build(_doc("s3", {"distill": {"teacher": str(teacher[0])}}))
    with pytest.raises(NlcError, match="not a trained `nlc train` run"):
        builder.build(_doc("s4", {"distill": {"teacher": str(tmp_path)}}))
    regression = {"task": "regression", "data": {"source": "synthetic"}, "steps": 1}
    with pytest.raises(NlcError, match="task 'regression' has none to compare"):
        builder.build(_doc("s5", {**regression, "distill": _distill(teacher)}))
