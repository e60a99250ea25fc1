"""DARTS: the mixed op, the supernet rewrite of a space, the search and its derived point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nlc.analysis.cost import analyze
from nlc.api import write_build
from nlc.emit.onnx import imported_package
from nlc.errors import NlcError
from nlc.frontend import lower
from nlc.frontend.load import load_spec
from nlc.frontend.search_ast import DartsSpec
from nlc.search.darts import derive
from nlc.search.space import load_space
from nlc.search.supernet import build_supernet
from nlc.targets import load_target

MIXED = """\
nlc: 1
name: mixtest
inputs:
  x: {shape: [B, 4, 6, 6]}
graph:
  - {op: conv2d, name: a, out: 4, kernel: 3, padding: 1, in: [x]}
  - {op: conv2d, name: b, out: 4, kernel: 5, padding: 2, in: [x]}
  - {op: identity, name: c, in: [x]}
  - {op: mixed, name: m, in: [a, b, c]}
"""

# A tiny space: a block with an op choice (two instances), and a top-level op choice.
SPACE = """\
nlc: 1
name: tiny
inputs:
  x: {shape: [B, 8]}
targets: [cpu]
blocks:
  wide:
    params: {d: int}
    graph:
      - {op: linear, name: fc1, out: 256}
      - relu
      - {op: linear, name: fc2, out: "${d}"}
  narrow:
    params: {d: int}
    graph: [{op: linear, name: fc, out: "${d}"}, relu]
  cell:
    graph:
      - {op: {choice: [wide, narrow, identity]}, name: op, d: 8}
graph:
  - {op: cell, name: cells, repeat: 2}
  - {op: {choice: [narrow, identity]}, d: 8}
  - {op: linear, name: head, out: 3}
train:
  epochs: 1
  batch_size: 32
  data: {source: synthetic, size: 256}
search:
  strategy: darts
  darts: {epochs: 1, arch_lr: 0.05}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_mixed_op_shape_params_cost_and_emission(tmp_path):
    spec = load_spec(write(tmp_path, MIXED))
    graph = lower(spec)
    node = graph.nodes["m"]
    assert node.outputs == graph.nodes["a"].outputs
    assert node.params["alpha"].shape == (3,)
    cost = analyze(graph, load_target("cpu"), {"B": 2})
    mixed = next(n for n in cost.nodes if n.name == "m")
    assert mixed.macs == 0 and mixed.flops == 2 * 3 * 2 * 4 * 6 * 6  # scale + add per input
    assert cost.macs == 2 * 4 * 6 * 6 * 4 * (9 + 25)  # the two convs it mixes, nothing more
    build = write_build(spec, graph, tmp_path / "build", onnx=False)
    with imported_package(build, "mixtest") as package:
        model = package.Model()
        x = torch.randn(2, 4, 6, 6)
        with torch.no_grad():
            model.m.alpha.copy_(torch.tensor([0.0, 0.0, 50.0]))  # all weight on the identity
            assert torch.allclose(model(x), x, atol=1e-6)


def test_mixed_op_rejects_inputs_of_other_types(tmp_path):
    text = MIXED.replace("out: 4, kernel: 5", "out: 5, kernel: 5")
    with pytest.raises(NlcError, match=r"mixed: input 1 has type f32\[B,5,6,6\]"):
        lower(load_spec(write(tmp_path, text)))


def test_supernet_holds_every_candidate_and_shares_block_choices(tmp_path):
    space = load_space(write(tmp_path, SPACE))
    net = build_supernet(space, tmp_path / "out")
    names = {c.dim.name: c for c in net.choices}
    assert set(names) == {"blocks.cell.graph.0.op", "graph.1.op"}
    cell = names["blocks.cell.graph.0.op"]
    assert cell.nodes == ("cells.0.op", "cells.1.op")
    for mixed, candidates in zip(cell.nodes, cell.candidates, strict=True):
        assert [len(c) for c in candidates] == [3, 2, 1]  # wide: fc1 relu fc2; identity
        assert net.graph.nodes[mixed].outputs == net.graph.nodes[f"{mixed}_wide.fc2"].outputs
    top = names["graph.1.op"]
    assert top.candidates[0][0] == ("choice1_narrow.fc", "choice1_narrow.relu")
    nodes = net.graph.nodes
    assert nodes["choice1_narrow.fc"].inputs == nodes["choice1_identity"].inputs  # the same input
    assert [v.node for v in nodes["choice1"].inputs] == ["choice1_narrow.relu", "choice1_identity"]


def test_option_of_another_type_is_reported_at_the_choice(tmp_path):
    text = SPACE.replace(
        'graph: [{op: linear, name: fc, out: "${d}"}', "graph: [{op: linear, name: fc, out: 5}"
    )
    space = load_space(write(tmp_path, text))
    with pytest.raises(NlcError, match="darts: mixed: input 1 has type") as err:
        build_supernet(space, tmp_path / "out")
    assert err.value.loc is not None and err.value.loc.file.endswith("space.yaml")


def test_space_without_op_choice_is_an_error(tmp_path):
    text = (
        SPACE.replace("{choice: [wide, narrow, identity]}", "wide")
        .replace("{choice: [narrow, identity]}", "narrow")
        .replace("out: 3}", "out: {choice: [3, 4]}}")
    )
    with pytest.raises(NlcError, match="no op choice for darts"):
        build_supernet(load_space(write(tmp_path, text)), tmp_path / "out")


def run_darts(tmp_path: Path, latency_weight: float) -> tuple[dict, dict]:
    space = load_space(write(tmp_path, SPACE))
    settings = DartsSpec(epochs=2, arch_lr=0.05, latency_weight=latency_weight)
    point = derive(space, tmp_path / "out", None, settings)
    return point, json.loads((tmp_path / "out" / "darts.json").read_text())


def test_derive_gives_a_point_that_lowers_and_logs_alphas(tmp_path):
    point, result = run_darts(tmp_path, 0.0)
    space = load_space(tmp_path / "space.yaml")
    space.check_point(point)
    lower(space.spec(point))
    assert result["derived"] == point
    assert len(result["epochs"]) == 2
    alphas = result["epochs"][-1]["alphas"]
    assert alphas["blocks.cell.graph.0.op"] != [1 / 3] * 3  # the alphas got gradients
    assert "val_accuracy" in result["supernet"]
    assert (tmp_path / "out" / "supernet" / "train.log").read_text().count("darts epoch") == 2


def test_latency_weight_lowers_expected_latency(tmp_path):
    point, result = run_darts(tmp_path, 1e4)
    # Summed over the two cells for the block's choice; the alphas start uniform.
    uniform = sum(sum(ms.values()) / len(ms) for ms in result["latency_ms"].values())
    assert result["epochs"][-1]["expected_latency_ms"] < 0.9 * uniform
    assert point["blocks.cell.graph.0.op"] != "wide"  # the slowest option loses


def test_search_trains_the_derived_architecture_as_a_trial(tmp_path: Path):
    """`strategy: darts` in `nlc search`: the derived point is enqueued and trained from scratch
    like any trial, not left waiting in the study."""
    from optuna.trial import TrialState

    from nlc.search import study as studies

    spec = Path(__file__).resolve().parents[1] / "examples" / "search_darts_digits.yaml"
    settings = {"trials": 1, "darts": {"epochs": 1}}
    setup = studies.make_setup(spec, {"train.epochs": 1}, settings, tmp_path / "s", None)
    study = studies.run(setup, 1, lambda line: None)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    assert trial.params == study.user_attrs["darts"]
    assert trial.values[0] > 0.5  # val_accuracy of the architecture trained from scratch
