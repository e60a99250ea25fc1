"""Passes in a build: the spec's `passes:`, `--pass`, and `--weights` (trained weights that
the passes transform with the graph into the package's weights.pt and model.onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import nlc
from nlc.api import load_trained, write_build
from nlc.cli import app
from nlc.emit.onnx import imported_package, seeded_model
from nlc.errors import NlcError
from nlc.frontend.load import parse_passes

CNN = {
    "nlc": 1,
    "name": "small_cnn",
    "inputs": {"x": {"shape": ["B", 3, 12, 12]}},
    "graph": [
        {"op": "conv2d", "name": "c1", "out": 16, "kernel": 3, "padding": 1},
        "relu",
        {"op": "conv2d", "name": "c2", "out": 24, "kernel": 3, "stride": 2, "padding": 1},
        "relu",
        "global_avgpool",
        {"op": "linear", "name": "fc", "out": 32},
        "relu",
        {"op": "linear", "name": "head", "out": 10},
    ],
}


@pytest.fixture
def dense(tmp_path: Path) -> tuple[Path, Path]:
    """The spec, and the seeded weights of its dense model saved as a training run would."""
    spec = tmp_path / "small_cnn.yaml"
    spec.write_text(yaml.safe_dump(CNN, sort_keys=False))
    built = nlc.build(spec, tmp_path / "dense", onnx=False)
    with imported_package(built, "small_cnn") as package:
        state = seeded_model(package).state_dict()
    weights = tmp_path / "best.pt"
    torch.save({"model": state, "step": 3}, weights)
    return spec, weights


def _outputs(folder: Path, x: torch.Tensor) -> torch.Tensor:
    with imported_package(folder, "small_cnn") as package:
        return seeded_model(package, folder)(x)


@pytest.mark.parametrize("step", ["tucker:rank=1.0", "cp:rank=1.0", "svd:rank=1.0"])
def test_full_rank_passes_on_trained_weights_keep_the_outputs(dense, tmp_path: Path, step: str):
    spec, weights = dense
    loaded, graph, transformed = load_trained(spec, weights, passes=parse_passes([step]))
    out = write_build(loaded, graph, tmp_path / "compressed", onnx=True, weights=transformed)
    x = torch.randn(4, 3, 12, 12)
    want, got = _outputs(tmp_path / "dense", x), _outputs(out, x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    report = json.loads((out / "passes.json").read_text())
    assert any(row.get("op_after") for row in report)
    assert json.loads((out / "onnx.json").read_text())["verified"]


def test_spec_passes_shrink_the_model_and_cli_passes_follow(tmp_path: Path):
    doc = {**CNN, "passes": [{"pass": "svd", "select": "fc", "rank": 4}]}
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    _, graph = nlc.load(spec)
    assert graph.nodes["fc"].op == "lowrank_linear" and graph.nodes["c1"].op == "conv2d"
    _, both = nlc.load(spec, passes=parse_passes(["tucker:rank=0.5,select=c2"]))
    assert both.nodes["c2"].op == "tucker_conv2d"
    assert [row["pass"] for row in both.meta["passes"] if "op_after" in row] == ["svd", "tucker"]
    assert (
        both.num_params() < graph.num_params() < nlc.load(tmp_path / "s.yaml")[1].num_params() + 1
    )


def test_weights_that_do_not_fit_are_refused(dense, tmp_path: Path):
    spec, _ = dense
    other = {"fc.weight": torch.zeros(3, 3)}
    path = tmp_path / "other.pt"
    torch.save(other, path)
    with pytest.raises(NlcError, match=r"do not fit the model small_cnn: missing c1\.weight"):
        load_trained(spec, path)
    torch.save({"model": [1, 2]}, path)
    with pytest.raises(NlcError, match="holds no state dict"):
        load_trained(spec, path)
    result = CliRunner().invoke(
        app, ["build", str(spec), "--weights", str(tmp_path / "none"), "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "no such file" in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_build_with_weights_and_pass_writes_weights(dense, tmp_path: Path):
    spec, weights = dense
    out = tmp_path / "out"
    args = ["build", str(spec), "--weights", str(weights), "--pass", "svd:rank=0.5"]
    result = CliRunner().invoke(app, [*args, "--no-onnx", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    state = torch.load(out / "weights.pt", weights_only=True)
    assert state["fc.0.weight"].shape == (12, 24) and "fc.weight" not in state  # rank 24 / 2
    listed = CliRunner().invoke(app, ["passes"])
    assert all(name in listed.stdout for name in ("svd", "tucker", "cp", "tt"))
