"""The generated train.py: run in subprocesses on small specs (CPU), and its text."""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from ruff.__main__ import find_ruff_bin

from nlc.emit.training import checkpoint_modules
from nlc.errors import NlcError

ROOT = Path(__file__).resolve().parents[1]
MLP = yaml.safe_load((ROOT / "examples/mlp_digits.yaml").read_text())
CNN = yaml.safe_load((ROOT / "examples/cnn_digits.yaml").read_text())
# A two-layer transformer over a 64-token vocabulary, with dropout (so that resumed runs must
# restore the random generators to match).
TINY_LM = {
    "nlc": 1,
    "name": "tiny_lm",
    "params": {"vocab": 64, "dim": 32, "causal": True},
    "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
    "blocks": {
        "encoder": {
            "params": {"dim": "int", "causal": "bool"},
            "graph": [
                {"op": "layernorm", "name": "ln_1"},
                {"op": "attention", "name": "attn", "heads": 2, "causal": "${causal}"},
                {"op": "add", "name": "res", "in": ["x", "attn"]},
                {"op": "layernorm", "name": "ln_2"},
                {"op": "linear", "name": "fc", "out": "${2 * dim}"},
                "gelu",
                {"op": "linear", "name": "proj", "out": "${dim}"},
                {"op": "dropout", "p": 0.1},
                {"op": "add", "in": ["res", "dropout"]},
            ],
        }
    },
    "graph": [
        {"op": "embedding", "name": "wte", "num": "${vocab}", "dim": "${dim}"},
        {"op": "pos_embedding", "name": "wpe", "num": 32},
        {"op": "encoder", "name": "h", "dim": "${dim}", "causal": "${causal}", "repeat": 2},
        {"op": "layernorm", "name": "ln_f"},
        {"op": "linear", "name": "head", "out": "${vocab}"},
    ],
}
CE = {"kind": "cross_entropy"}
MINIMAL = {"loss": CE}
LM_DATA = {"source": "synthetic", "seq_len": 32, "size": 512}


def spec(base: dict[str, Any], train: dict[str, Any], **params: Any) -> dict[str, Any]:
    """`base` with a train section, resolved as `nlc build` resolves it (one epoch unless the
    section gives the length) and with `params` overridden."""
    doc = copy.deepcopy(base)
    doc["params"] = {**doc.get("params", {}), **params}
    doc["train"] = train if "steps" in train or "epochs" in train else {**train, "epochs": 1}
    return doc


def mlm(**train: Any) -> dict[str, Any]:
    return spec(TINY_LM, {"task": "mlm", "data": LM_DATA, "loss": CE, **train}, causal=False)


def run_train(built, run: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", f"{built.name}.train", "--run", str(run), *args],
        env=_env(built),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def torchrun(built, run: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
        + ["-m", f"{built.name}.train", "--", "--run", str(run), *args],
        env=_env(built),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _env(built) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(built.root), "OMP_NUM_THREADS": "1"}


def train_module(built) -> ModuleType:
    """The generated train.py, imported."""
    sys.path.insert(0, str(built.root))
    try:
        return importlib.import_module(f"{built.name}.train")
    finally:
        sys.path.remove(str(built.root))


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def ruff_check(folder: Path) -> str:
    done = subprocess.run(
        [find_ruff_bin(), "check", "--isolated", "--select", "E,F,I,B,UP", "--line-length=100"]
        + [str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    return "" if done.returncode == 0 else done.stdout


# -- emission -------------------------------------------------------------------------------


def test_checkpoint_modules_are_outermost_block_instances_in_graph_order(builder):
    graph = builder.build(spec(CNN, MINIMAL)).graph
    assert checkpoint_modules(graph, False) == []
    assert checkpoint_modules(graph, True) == ["stem", "down", "body.0", "body.1"]
    assert checkpoint_modules(graph, ["conv_bn"]) == ["stem", "down", "body.0", "body.1"]
    lm = builder.build(spec(TINY_LM, {"task": "lm", "data": LM_DATA, "loss": CE})).graph
    assert checkpoint_modules(lm, ["encoder"]) == ["h.0", "h.1"]


def test_symbolic_sample_dims_are_rejected_at_the_inputs(builder):
    doc = spec(CNN, MINIMAL)
    doc["inputs"] = {"x": {"shape": ["B", 1, "H", "W"]}}
    with pytest.raises(NlcError, match="sample shape") as error:
        builder.build(doc)
    assert error.value.loc is not None and error.value.loc.line > 1


def test_package_without_train_has_no_training_files(builder):
    built = builder.build(copy.deepcopy(MLP))
    assert not any(name.endswith(("train.py", "data.py")) for name in built.files)
    assert 'dependencies = ["torch>=2.6"]' in built.files["pyproject.toml"]


def test_pyproject_lists_what_training_imports(builder):
    text = builder.build(spec(MLP, {"loss": CE})).files["pyproject.toml"]
    assert '"numpy"' in text and '"scikit-learn"' in text and "tokenizers" not in text
    assert 'plot = ["matplotlib"]' in text and 'track = ["tensorboard", "mlflow-skinny"]' in text
    bpe = {
        "task": "lm",
        "data": {"source": "text", "path": "corpus.txt", "seq_len": 32},
        "loss": CE,
    }
    bpe["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 64}
    text = builder.build(spec(TINY_LM, bpe)).files["pyproject.toml"]
    assert '"tokenizers"' in text and "scikit-learn" not in text


EVERYTHING = {
    "loss": CE,
    "precision": "fp16",
    "accumulate": 2,
    "clip_grad": 1.0,
    "grad_checkpointing": True,
    "compile": True,
    "distributed": "fsdp",
    "early_stopping": {"metric": "val_accuracy", "mode": "max"},
    "checkpoint": {"every": 10},
    "tracking": {"tensorboard": True, "mlflow": True},
    "optimizer": {"name": "lion", "groups": [{"params": "head.*", "lr_scale": 10}]},
    "schedule": {"name": "onecycle"},
}
# Code that only features in use may emit.
FEATURES = {
    "autocast": "torch.autocast",
    "scaler": "GradScaler",
    "accumulation": "no_sync",
    "clipping": "clip_grad_norm_",
    "activation checkpointing": "use_reentrant=False",
    "compile": "torch.compile(",
    "fsdp": "fully_shard",
    "early stopping": "bad_evals",
    "step checkpoints": "step-",
    "tensorboard": "SummaryWriter",
    "mlflow": "import mlflow",
    "lion": "class Lion",
    "parameter groups": "fnmatch",
    "masking": "mask_tokens",
}


@pytest.mark.parametrize(
    ("base", "train", "present"),
    [
        (CNN, MINIMAL, set()),
        (CNN, EVERYTHING, set(FEATURES) - {"accumulation", "masking"}),
        (CNN, {**EVERYTHING, "distributed": "ddp"}, set(FEATURES) - {"fsdp", "masking"}),
        (
            TINY_LM,
            {"task": "mlm", "data": LM_DATA, "loss": CE, "precision": "bf16"},
            {"autocast", "masking"},
        ),
    ],
    ids=["minimal", "everything-fsdp", "everything-ddp", "mlm-bf16"],
)
def test_generated_script_emits_only_features_in_use(builder, base, train, present):
    built = builder.build(spec(base, train))
    text = built.text("train.py")
    if train.get("accumulate") and train.get("distributed") == "fsdp":
        present = present | {"fsdp"}
        assert "set_requires_gradient_sync" in text
    for feature, marker in FEATURES.items():
        assert (marker in text) == (feature in present), feature
    assert "import nlc" not in text and "from nlc" not in text
    assert ruff_check(built.root) == ""


def test_long_package_names_keep_the_lines_short(builder):
    stop = {"metric": "val_perplexity", "mode": "min"}
    train = {**EVERYTHING, "task": "mlm", "data": LM_DATA, "early_stopping": stop}
    doc = spec(TINY_LM, train)
    built = builder.build({**doc, "name": "a_transformer_with_a_long_name"})
    assert ruff_check(built.root / built.name / "train.py") == ""


def test_generated_training_files_are_deterministic(builder):
    docs = [spec(CNN, EVERYTHING), mlm(precision="bf16")]
    for doc in docs:
        first = builder.build(doc, unique=False).files
        second = builder.build(doc, unique=False).files
        assert first == second
        assert {f"{doc['name']}/train.py", f"{doc['name']}/data.py"} <= set(first)
    assert f"{TINY_LM['name']}/generate.py" in first


# -- training runs --------------------------------------------------------------------------


# Three epochs of the MLP on digits, a checkpoint every step: the reference run of several tests.
DIGITS = {
    "loss": CE,
    "epochs": 3,
    "log_every": 1,
    "checkpoint": {"every": 1, "keep_last": 2},
}


@pytest.fixture(scope="module")
def digits(builder):
    built = builder.build(spec(MLP, DIGITS))
    run = built.root.parent / "reference"
    run_train(built, run)
    return built, run


def test_digits_train_to_accuracy_far_above_chance(digits):
    built, run = digits
    rows = metrics(run)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 75 and sum(losses[-5:]) < sum(losses[:5]) / 2
    result = summary(run)
    assert result["status"] == "completed" and result["steps"] == 75 and result["epochs"] == 3
    assert result["final"]["val_accuracy"] > 0.85
    assert [r["step"] for r in rows if "val_loss" in r] == [25, 50, 75]
    assert {"python", "torch", "numpy", "device", "world_size", "nlc", "package"} <= set(
        json.loads((run / "env.json").read_text())
    )
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    assert "completed after 75 steps" in (run / "train.log").read_text()


def test_checkpoints_load_into_the_model_and_keep_the_last_k_steps(digits):
    built, run = digits
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step-74.pt", "step-75.pt"]
    last = load(run / "checkpoints/last.pt")
    assert last["state"]["step"] == 75
    model = built.load().Model()
    model.load_state_dict(last["model"])
    assert {"optimizer", "scheduler", "rng", "config"} <= set(last)


def test_plots_are_drawn_when_matplotlib_is_installed(digits):
    pytest.importorskip("matplotlib")
    _, run = digits
    assert {"loss.png", "lr.png", "val_accuracy.png"} <= {p.name for p in (run / "plots").iterdir()}


def _latest_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=-1)


def kill_at(built, run: Path, step: int, resume: bool) -> None:
    """Start training and SIGKILL it once metrics.jsonl shows `step`."""
    args = [sys.executable, "-m", f"{built.name}.train", "--run", str(run)]
    process = subprocess.Popen(
        args + (["--resume"] if resume else []),
        env=_env(built),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _latest_step(run) < step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training ended before it could be killed"


def _same_weights(a: Path, b: Path) -> None:
    first, second = load(a)["model"], load(b)["model"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _without_speed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def test_killed_and_resumed_run_is_bitwise_identical(digits):
    built, reference = digits
    run = built.root.parent / "killed"
    kill_at(built, run, 10, resume=False)
    # A kill leaves every checkpoint readable (each is written whole or not at all).
    steps = [load(path)["state"]["step"] for path in (run / "checkpoints").glob("*.pt")]
    assert max(steps) >= 9  # the row of step 10 is logged after step-9.pt is written
    kill_at(built, run, 40, resume=True)
    run_train(built, run, "--resume")
    _same_weights(reference / "checkpoints/last.pt", run / "checkpoints/last.pt")
    assert _without_speed(metrics(run)) == _without_speed(metrics(reference))
    assert summary(run)["status"] == "completed"


def test_killed_and_resumed_mlm_run_is_bitwise_identical(builder, tmp_path):
    # Dropout, masking and gradient accumulation all draw on state that a resume restores.
    built = builder.build(
        mlm(epochs=3, batch_size=16, accumulate=2, log_every=1, checkpoint={"every": 3})
    )
    run_train(built, tmp_path / "reference")
    kill_at(built, tmp_path / "run", 7, resume=False)
    kill_at(built, tmp_path / "run", 25, resume=True)
    run_train(built, tmp_path / "run", "--resume")
    _same_weights(tmp_path / "reference/checkpoints/last.pt", tmp_path / "run/checkpoints/last.pt")
    result = summary(tmp_path / "run")
    assert result["final"]["val_perplexity"] < result["unigram_perplexity"]


def test_ddp_on_two_cpu_processes_matches_one_process(builder, digits, tmp_path):
    _, reference = digits
    built = builder.build(spec(MLP, {**DIGITS, "checkpoint": {}, "log_every": 25}))
    torchrun(built, tmp_path / "ddp")
    result = summary(tmp_path / "ddp")
    assert result["status"] == "completed" and result["steps"] == 75
    single = summary(reference)["final"]["val_accuracy"]
    assert abs(result["final"]["val_accuracy"] - single) < 0.05
    assert json.loads((tmp_path / "ddp/env.json").read_text())["world_size"] == 2


def test_fsdp_on_two_cpu_processes_trains_and_saves_whole_weights(builder, tmp_path):
    train = {"loss": CE, "epochs": 2, "distributed": "fsdp", "log_every": 25, "accumulate": 2}
    built = builder.build(spec(CNN, train))
    torchrun(built, tmp_path / "fsdp")
    result = summary(tmp_path / "fsdp")
    assert result["status"] == "completed" and result["final"]["val_accuracy"] > 0.8
    built.load().Model().load_state_dict(load(tmp_path / "fsdp/checkpoints/last.pt")["model"])


def test_lr_find_suggests_an_lr_and_trains_nothing(builder, tmp_path):
    built = builder.build(spec(MLP, {"loss": CE}))
    done = run_train(built, tmp_path / "run", "--lr-find")
    found = json.loads((tmp_path / "run/lr_find.json").read_text())
    assert 1e-7 <= found["suggestion"] <= 10
    assert f"suggested lr: {found['suggestion']:.3g}" in done.stdout
    assert found["lr"][0] == pytest.approx(1e-7) and len(found["lr"]) == len(found["loss"])
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(builder, tmp_path, precision):
    train = {"loss": CE, "epochs": 1, "precision": precision, "clip_grad": 1.0}
    built = builder.build(spec(MLP, train))
    done = run_train(built, tmp_path / "run")
    name = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert f"autocast {name}" in done.stdout
    result = summary(tmp_path / "run")
    assert math.isfinite(result["final"]["val_loss"]) and result["final"]["val_accuracy"] > 0.3
    checkpoint = load(tmp_path / "run/checkpoints/last.pt")
    assert ("scaler" in checkpoint) == (precision == "fp16")


def test_early_stopping_stops(builder, tmp_path):
    stop = {"metric": "val_loss", "mode": "min", "patience": 2, "min_delta": 10.0}
    built = builder.build(spec(MLP, {"loss": CE, "epochs": 50, "early_stopping": stop}))
    run_train(built, tmp_path / "run")
    result = summary(tmp_path / "run")
    # The first evaluation sets the best; two more without a 10.0 improvement stop the run.
    assert result["status"] == "stopped_early" and result["steps"] == 75
    assert result["best"]["metric"] == "val_loss" and result["best"]["step"] == 25


def test_regression_with_lion_accumulation_and_a_schedule(builder, tmp_path):
    doc = {
        "nlc": 1,
        "name": "regress",
        "inputs": {"x": {"shape": ["B", 16]}},
        "graph": [{"op": "linear", "name": "fc", "out": 64}, "gelu", {"op": "linear", "out": 3}],
        "train": {
            "task": "regression",
            "data": {"source": "synthetic", "size": 1024},
            "loss": {"kind": "mse"},
            "epochs": 4,
            "batch_size": 32,
            "accumulate": 2,
            "clip_grad": 1.0,
            "optimizer": {"name": "lion", "lr": 1e-3, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "warmup": 0.1},
            "metrics": ["mae"],
        },
    }
    built = builder.build(doc)
    run_train(built, tmp_path / "run")
    evaluations = [r for r in metrics(tmp_path / "run") if "val_loss" in r]
    assert evaluations[-1]["val_loss"] < 0.7 * evaluations[0]["val_loss"]
    assert evaluations[-1]["val_rmse"] == pytest.approx(math.sqrt(evaluations[-1]["val_loss"]))


def test_set_overrides_the_config_and_rejects_unknown_or_built_in_keys(builder, tmp_path):
    built = builder.build(spec(MLP, {"loss": CE}))
    run = tmp_path / "run"
    run_train(built, run, "--set", "steps=5", "--set", "epochs=None", "--set", "optimizer.lr=3e-3")
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 5 and config["optimizer"]["lr"] == 3e-3
    assert summary(run)["steps"] == 5
    train = train_module(built)
    assert train.load_config(["data.workers=2", "seed=x"])["seed"] == "x"  # not a literal: str
    with pytest.raises(SystemExit, match="optimizer.lrr: no such setting"):
        train.load_config(["optimizer.lrr=1"])
    with pytest.raises(SystemExit, match="rebuild"):
        train.load_config(["precision=bf16"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        train.load_config(["seed"])


def test_a_crash_keeps_the_last_checkpoint_and_writes_a_failed_summary(builder, tmp_path):
    built = builder.build(spec(MLP, {"loss": CE, "eval_every": 5, "log_every": 1}))
    run = tmp_path / "run"
    # Make the 8th optimizer step raise, as a bad batch or an out-of-memory error would.
    code = (
        f"import sys; from {built.name} import train\n"
        "step = train.Trainer.train_step\n"
        "def failing(self, *batch):\n"
        "    if self.state.step == 7: raise RuntimeError('boom')\n"
        "    return step(self, *batch)\n"
        "train.Trainer.train_step = failing\n"
        f"sys.argv = ['train', '--run', {str(run)!r}]\n"
        "train.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(built), capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "RuntimeError: boom" in done.stderr
    result = summary(run)
    assert result["status"] == "failed" and "boom" in result["error"] and result["steps"] == 7
    assert load(run / "checkpoints/last.pt")["state"]["step"] == 5
    again = run_train(built, run, check=False)
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = run_train(built, run, "--resume", "--set", "steps=10", "--set", "epochs=None")
    assert "resumed at step 5" in resumed.stdout and summary(run)["steps"] == 10


def test_trackers_write_tensorboard_events_and_an_mlflow_run(builder, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    train = {"loss": CE, "epochs": 1, "tracking": {"tensorboard": True, "mlflow": True}}
    built = builder.build(spec(MLP, train, depth=1))
    run_train(built, tmp_path / "run")
    assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))
    metric_files = {p.name for p in (tmp_path / "run/mlruns").glob("*/*/metrics/*")}
    assert {"train_loss", "val_loss", "val_accuracy"} <= metric_files
    assert list((tmp_path / "run/mlruns").glob("*/*/params/optimizer.lr"))


def test_progress_bar_on_a_terminal(builder, tmp_path):
    built = builder.build(spec(MLP, {"loss": CE, "epochs": 1, "log_every": 5}))
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", f"{built.name}.train", "--run", str(tmp_path / "run")],
        env=_env(built),
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        output += chunk
    assert process.wait() == 0
    os.close(leader)
    text = output.decode()
    assert "\r" in text and "ETA" in text and "samples/s" in text
    # Step lines go to train.log rather than the terminal.
    assert "step 5/25: loss" in (tmp_path / "run/train.log").read_text()
