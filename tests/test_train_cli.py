"""`nlc train`, `nlc runs` and `nlc generate` end to end, as a user runs them (the generated
scripts themselves are tested in test_train_script.py and test_train_data.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
NLC = [sys.executable, "-c", "from nlc.cli import app; app()"]
CORPUS = ROOT / "examples" / "data" / "paradise_lost.txt"


def _nlc(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*NLC, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_cnn_digits_example_reaches_97_percent(tmp_path: Path):
    """The issue's acceptance run, at the example's own settings."""
    done = _nlc("train", ROOT / "examples" / "cnn_digits.yaml", "-o", "runs/cnn", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "cnn"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] in ("completed", "stopped_early")
    assert summary["best"]["metric"] == "val_accuracy" and summary["best"]["value"] >= 0.97
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "plots" / "loss.png").is_file()
    assert (run / "package" / "cnn_digits" / "train.py").is_file()

    again = _nlc("train", ROOT / "examples" / "cnn_digits.yaml", "-o", "runs/cnn", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a training run" in again.stderr
    changed = _nlc(
        "train", ROOT / "examples" / "cnn_digits.yaml", "-o", "runs/cnn", "--resume",
        "--set", "width=8", cwd=tmp_path,
    )  # fmt: skip
    assert changed.returncode == 2 and "not the one" in changed.stderr

    # Fine-tuning starts from the trained weights, through an exact (full-rank) Tucker-2: at a
    # learning rate of 1e-9 the accuracy is the trained one (a fresh model would be at chance).
    tuned = _nlc(
        "train", ROOT / "examples" / "cnn_digits.yaml", "--weights", "runs/cnn",
        "--pass", "tucker:rank=1.0", "--set", "train.epochs=1",
        "--set", "train.optimizer.lr=1e-9", "-o", "tuned", cwd=tmp_path,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    log = (tmp_path / "tuned" / "train.log").read_text()
    assert "initial weights: tuned/package/weights.pt" in log
    assert json.loads((tmp_path / "tuned" / "summary.json").read_text())["best"]["value"] >= 0.97

    shutil.copytree(run, tmp_path / "runs" / "cnn_b")
    config = json.loads((run / "config.json").read_text())
    config["optimizer"]["lr"] = 0.01
    (tmp_path / "runs" / "cnn_b" / "config.json").write_text(json.dumps(config))
    listed = _nlc("runs", "runs", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["run"] for r in rows] == ["cnn", "cnn_b"]
    assert [r["optimizer.lr"] for r in rows] == ["0.003", "0.01"]  # only what differs
    assert "seed" not in rows[0] and rows[0]["best"].startswith("val_accuracy 0.9")


@pytest.fixture
def text_lm(tmp_path: Path) -> Path:
    """A tiny causal LM on 20 KB of the committed corpus, byte-level."""
    (tmp_path / "corpus.txt").write_text(CORPUS.read_text()[:20_000])
    spec = {
        "nlc": 1,
        "name": "tiny_lm",
        "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
        "graph": [
            {"op": "embedding", "name": "embed", "num": 256, "dim": 64, "std": 0.02},
            {"op": "pos_embedding", "num": 32},
            {"op": "attention", "heads": 2, "causal": True},
            {"op": "linear", "name": "head", "out": 256},
        ],
        "train": {
            "task": "lm",
            "data": {"source": "text", "path": "corpus.txt", "seq_len": 32},
            "steps": 300,
            "batch_size": 16,
            "optimizer": {"lr": 0.01},
            "schedule": {"name": "cosine", "warmup": 20},
        },
    }
    spec["train"]["data"]["tokenizer"] = {"kind": "byte"}
    path = tmp_path / "tiny_lm.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_train_then_generate_text(text_lm: Path, tmp_path: Path):
    done = _nlc("train", text_lm, "-o", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["val_perplexity"] < 0.8 * summary["unigram_perplexity"]
    prompt = "Of Mans First"
    args = ("--prompt", prompt, "--max-tokens", "40", "--seed", "1")
    first = _nlc("generate", "run", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(prompt) and len(first.stdout) > len(prompt) + 10
    assert _nlc("generate", "run", *args, cwd=tmp_path).stdout == first.stdout  # seeded

    not_lm = _nlc("generate", tmp_path, "--prompt", "x", cwd=tmp_path)
    assert not_lm.returncode == 2 and "not a training run" in not_lm.stderr


def test_train_needs_a_train_section(tmp_path: Path):
    done = _nlc("train", ROOT / "examples" / "resnet18.yaml", "-o", "r", cwd=tmp_path)
    assert done.returncode == 2 and "has no `train:` section" in done.stderr
    assert not (tmp_path / "r").exists()
