"""LoRA training in the generated train.py: only the adapters (and `trainable:` globs) train,
the frozen weights stay bitwise as they were, LoRA+ gives the B matrices lr x ratio, and the
trained adapters merge back into the dense model exactly."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from test_passes import _package
from test_train_script import ruff_check

from nlc.errors import NlcError
from nlc.passes import run_passes

ROOT = Path(__file__).resolve().parents[1]
LORA = {"pass": "lora", "rank": 2}


def _gpt(name: str, train: dict, passes: list | None = None) -> dict:
    """The zoo's gpt2_small at ~0.4M parameters, as an lm on synthetic tokens."""
    doc = yaml.safe_load((ROOT / "examples/gpt2_small.yaml").read_text())
    doc.pop("targets"), doc.pop("dims")
    doc["name"] = name
    doc["params"] = {"vocab": 64, "context": 32, "dim": 128, "heads": 2, "layers": 2, "dropout": 0}
    doc["passes"] = [LORA] if passes is None else passes
    data = {"source": "synthetic", "seq_len": 32, "size": 256}
    doc["train"] = {"task": "lm", "data": data, "steps": 6, "batch_size": 8, **train}
    return doc


def _train(built, run: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(built.root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", f"{built.name}.train", "--run", str(run), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_lora_trains_adapters_only_and_merges_exactly(builder, tmp_path: Path):
    train = {"optimizer": {"lr": 0.01, "lora_plus_ratio": 16}, "log_every": 2}
    built = builder.build(_gpt("lora_gpt", train))
    torch.manual_seed(0)
    init = built.load().Model().state_dict()
    torch.save(init, tmp_path / "init.pt")
    _train(built, tmp_path / "run", "--init", str(tmp_path / "init.pt"))

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    count = summary["parameters"]
    assert 0 < count["trainable"] < 0.02 * count["total"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"trainable: {count['trainable']:,} of {count['total']:,} parameters" in log
    assert "optimizer group '*.lora_B': " in log and "lr x16" in log

    trained = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    adapters = {k for k in trained if k.endswith((".lora_A", ".lora_B"))}
    assert adapters and all(not torch.equal(trained[k], init[k]) for k in adapters if "B" in k)
    assert all(torch.equal(trained[k], init[k]) for k in trained if k not in adapters)

    model = built.load().Model().eval()
    model.load_state_dict(trained)
    merged_graph, merged, _ = run_passes(built.graph, trained, [("lora_merge", {})])
    assert not any(node.op == "lora_linear" for node in merged_graph)
    spec = dataclasses.replace(built.spec, ast=built.spec.ast.model_copy(update={"train": None}))
    dense = _package(builder, merged_graph, spec).Model().eval()
    dense.load_state_dict(merged)
    ids = torch.randint(64, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(dense(ids), model(ids), rtol=1e-5, atol=1e-5)


def _train_module(built) -> ModuleType:
    sys.path.insert(0, str(built.root))
    try:
        return importlib.import_module(f"{built.name}.train")
    finally:
        sys.path.remove(str(built.root))


def test_trainable_globs_add_parameters(builder):
    built = builder.build(_gpt("lora_head", {"trainable": ["ln_f.*"]}))
    train = _train_module(built)
    model = train.Model()
    count = train.freeze(model)
    names = {k for k, p in model.named_parameters() if p.requires_grad}
    assert names == {"ln_f.weight", "ln_f.bias"} | {
        f"h.{i}.{n}.lora_{m}" for i in range(2) for n in ("fc", "proj") for m in "AB"
    }
    assert count == sum(model.get_parameter(n).numel() for n in names)
    assert "trainable" in train.FIXED
    assert ruff_check(built.root) == ""


def test_errors(builder):
    with pytest.raises(NlcError, match="'h.*.nope' matches no parameter"):
        builder.build(_gpt("bad_glob", {"trainable": ["h.*.nope"]}))
    with pytest.raises(NlcError, match="lora_plus_ratio needs LoRA adapters"):
        builder.build(_gpt("no_lora", {"optimizer": {"lora_plus_ratio": 16}}, passes=[]))


def test_plain_specs_keep_their_script(builder):
    """Specs using none of this get no freezing code, and CONFIG has no new keys."""
    built = builder.build(_gpt("no_lora_plain", {}, passes=[]))
    text = built.files[f"{built.name}/train.py"]
    assert "TRAINABLE" not in text and "def freeze" not in text and "teacher" not in text
    config = _train_module(built).CONFIG
    assert not {"trainable", "distill", "iterative"} & set(config)
    assert "lora_plus_ratio" not in config["optimizer"]
