"""Search spaces in the spec: markers, conditional dims, points, concrete specs and `nlc check`."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import example_specs
import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nlc.api import write_build
from nlc.cli import app
from nlc.errors import NlcError
from nlc.frontend.load import load_spec
from nlc.frontend.lower import lower
from nlc.search.space import Space, load_space

SPACES = Path(__file__).parent / "search_spaces"
CNN = SPACES / "cnn.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- random spaces ------------------------------------------------------------------------------

ints = st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True)


@st.composite
def markers(draw) -> Any:
    """A marker over small positive ints: a choice or an int range (maybe with a step)."""
    if draw(st.booleans()):
        return {"choice": draw(ints)}
    low = draw(st.integers(1, 6))
    step = draw(st.integers(1, 3))
    return {"int": [low, low + step * draw(st.integers(0, 2))], "step": step}


@st.composite
def space_docs(draw) -> dict[str, Any]:
    """An MLP-like space whose every point is valid: width choices, op choices (with identity),
    optional items, plain and independent repeats of a block, searched train settings."""
    graph: list[Any] = [{"op": "linear", "name": "stem", "out": "${width}"}]
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["linear", "act", "optional", "repeat", "independent"]))
        if kind == "linear":
            graph.append({"op": "linear", "out": draw(markers())})
        elif kind == "act":
            graph.append(
                {"op": {"choice": draw(st.sampled_from([["relu", "gelu"], ["identity", "tanh"]]))}}
            )
        elif kind == "optional":
            graph.append({"op": "linear", "out": draw(markers()), "optional": True})
        else:
            item = {
                "op": "layer",
                "name": f"stage{i}",
                "c": draw(markers()),
                "repeat": draw(markers()),
            }
            if kind == "independent":
                item["independent"] = True
            graph.append(item)
    graph.append({"op": "linear", "name": "head", "out": 3})
    doc: dict[str, Any] = {
        "nlc": 1,
        "name": "space",
        "params": {"width": draw(markers())},
        "inputs": {"x": {"shape": ["B", 6]}},
        "blocks": {
            "layer": {
                "params": {"c": "int"},
                "graph": [
                    {"op": "linear", "name": "fc", "out": "${c}"},
                    {"op": {"choice": ["relu", "silu"]}, "name": "act"},
                ],
            }
        },
        "graph": graph,
        "outputs": ["head"],
    }
    if draw(st.booleans()):
        doc["train"] = {"batch_size": {"choice": [16, 32]}, "epochs": 1}
    return doc


def _space(doc: dict[str, Any], folder: Path) -> Space:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    space = load_space(path)
    assert space is not None
    return space


def _assert_inside(space: Space, point: dict[str, Any]) -> None:
    """Exactly the active dims, each with a legal value (`check_point` raises otherwise)."""
    space.check_point(point)
    assert set(point) == {d.name for d in space.active(point)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space_docs(), st.integers(0, 2**16))
def test_random_spaces_points_are_valid_and_counted(doc, seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        space = _space(doc, Path(tmp))
        size = space.size()
        assert size is not None and size == space.count()
        if size <= 300:
            points = list(space.points())
            assert len(points) == size
            assert len({tuple(sorted(p.items())) for p in points}) == size  # no duplicates
        for _ in range(4):
            point = space.sample(rng)
            _assert_inside(space, point)
            graph = lower(space.spec(point))
            assert graph.nodes
            mutated = space.mutate(point, rng)
            _assert_inside(space, mutated)
            movable = any(len(d.values() or [0, 1]) > 1 for d in space.active(point))
            assert (mutated != point) == movable


@settings(max_examples=10, deadline=None)
@given(space_docs(), st.integers(0, 2**16))
def test_suggest_with_optuna_gives_points_of_the_space(doc, seed):
    with tempfile.TemporaryDirectory() as tmp:
        space = _space(doc, Path(tmp))
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        for _ in range(3):
            trial = study.ask()
            point = space.suggest(trial)
            _assert_inside(space, point)
            study.tell(trial, 0.0)
            # A fixed trial replays the point: the Optuna parameter names are the dim names.
            assert space.suggest(optuna.trial.FixedTrial(point)) == point


def test_a_few_random_points_build(tmp_path):
    space = load_space(CNN)
    rng = random.Random(1)
    for i in range(2):
        spec = space.spec(space.sample(rng))
        out = write_build(spec, lower(spec), tmp_path / f"pkg{i}", onnx=False)
        assert (out / "cnn_space" / "model.py").is_file()


# -- the conditional CNN space -------------------------------------------------------------------


def test_cnn_space_dims_and_conditions():
    space = load_space(CNN)
    dims = {d.name: d for d in space.dims}
    assert list(dims) == [
        "params.width",
        "blocks.conv_bn.graph.2.op",
        "graph.1.repeat",
        "graph.1.kernel#0",
        "graph.1.kernel#1",
        "graph.1.kernel#2",
        "graph.2.optional",
        "graph.2.op",
        "train.batch_size",
        "train.optimizer.lr",
    ]
    assert dims["graph.1.kernel#0"].parent is None  # every repeat count has copy 0
    assert (dims["graph.1.kernel#2"].parent, dims["graph.1.kernel#2"].when) == (
        "graph.1.repeat",
        (3,),
    )
    assert (dims["graph.2.op"].parent, dims["graph.2.op"].when) == ("graph.2.optional", (True,))
    lr = dims["train.optimizer.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert str(dims["params.width"].loc) == f"{CNN}:6:10"
    # 2 widths x 2 acts x (2 + 4 + 8 kernel copies) x (off, or on with 2 ops) x 2 batch sizes
    assert space.size() is None and space.count() == 2 * 2 * 14 * 3 * 2


def test_independent_copies_expand_with_their_own_values():
    space = load_space(CNN)
    chosen = {"graph.1.repeat": 3, "graph.1.kernel#0": 3, "graph.1.kernel#1": 5}
    point = space.complete({**chosen, "graph.1.kernel#2": 3}, random.Random(0))
    graph = lower(space.spec(point))
    kernels = {n.name: n.attrs.kernel for n in graph.nodes.values() if n.op == "conv2d"}
    assert kernels == {"stem.conv": 3, "body_0.conv": 3, "body_1.conv": 5, "body_2.conv": 3}
    fewer = space.complete({**point, "graph.1.repeat": 1}, random.Random(0))
    assert "graph.1.kernel#1" not in fewer and "graph.1.kernel#2" not in fewer
    assert [n for n in lower(space.spec(fewer)).nodes if n.startswith("body")] == [
        "body_0.conv",
        "body_0.bn",
        "body_0.act",
    ]


def test_outputs_and_references_follow_an_expanded_item(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "nlc: 1\nname: m\ninputs: {x: {shape: [B, 4]}}\n"
        "blocks: {fc: {params: {c: int}, graph: [{op: linear, out: '${c}'}]}}\n"
        "graph:\n  - {op: fc, name: deep, c: {choice: [4, 8]}, repeat: {int: [1, 2]},\n"
        "     independent: true}\n"
        "  - {op: add, name: res, in: [x, deep]}\n"
        "outputs: [res, deep]\n"
    )
    space = load_space(tmp_path / "s.yaml")
    point = {"graph.0.repeat": 2, "graph.0.c#0": 8, "graph.0.c#1": 4}
    spec = space.spec(point)
    assert spec.ast.outputs == ["res", "deep_1"]
    assert spec.ast.graph[2].inputs == ["x", "deep_1"]
    lower(spec)


def test_optional_item_off_is_identity_and_its_op_dim_disappears():
    space = load_space(CNN)
    point = space.with_value(
        space.sample(random.Random(3)), space._by_name["graph.2.optional"], False, random.Random(3)
    )
    assert "graph.2.op" not in point
    graph = lower(space.spec(point))
    assert graph.nodes["pool"].op == "identity"


def test_yaml_of_a_point_is_a_buildable_spec_in_another_folder(tmp_path):
    space = load_space(CNN)
    point = space.sample(random.Random(5))
    text = space.yaml(point, tmp_path)
    assert "choice" not in text and "search" not in text
    (tmp_path / "0.yaml").write_text(text)
    again = lower(load_spec(tmp_path / "0.yaml"))
    assert list(again.nodes) == list(lower(space.spec(point)).nodes)


def test_load_spec_refuses_a_space():
    with pytest.raises(NlcError) as e:
        load_spec(CNN)
    assert "search space with 10 dimensions" in e.value.message
    assert str(e.value.loc) == f"{CNN}:6:10" and "nlc search" in e.value.hint


def test_set_fixes_a_searched_param():
    space = load_space(CNN, {"width": 12})
    assert "params.width" not in {d.name for d in space.dims}
    spec = space.spec(space.sample(random.Random(0)))
    assert spec.ast.params["width"] == 12


def test_a_plain_spec_is_no_space():
    assert load_space(Path(__file__).parents[1] / "examples" / "cnn_digits.yaml") is None


def test_pipeline_space_searches_both_files(tmp_path):
    (tmp_path / "net.yaml").write_text(CNN.read_text())
    (tmp_path / "pipe.yaml").write_text(
        "nlc: 1\nname: piped\nmodel:\n  spec: net.yaml\n"
        "  params: {num_classes: {choice: [10, 12]}}\n"
        "train:\n  epochs: 1\n  optimizer: {lr: {float: [1.0e-3, 1.0e-2]}}\n"
    )
    space = load_space(tmp_path / "pipe.yaml")
    names = [d.name for d in space.dims]
    assert names[:2] == ["model.params.num_classes", "train.optimizer.lr"]
    assert "graph.1.repeat" in names  # from net.yaml, whose train section the pipeline replaces
    assert "train.batch_size" not in names
    point = space.sample(random.Random(0))
    spec = space.spec(point)
    assert (
        spec.ast.name == "piped"
        and spec.ast.params["num_classes"] == point["model.params.num_classes"]
    )
    assert spec.ast.train.optimizer.lr == point["train.optimizer.lr"]
    with pytest.raises(NlcError, match="search space"):
        load_spec(tmp_path / "pipe.yaml")


# -- nlc check -----------------------------------------------------------------------------------


def _nlc(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_prints_the_space_and_validates_its_points():
    code, stdout, _ = _nlc("check", str(CNN))
    assert code == 0
    assert "10 dimensions" in stdout and "if graph.1.repeat in 3" in stdout
    assert "size: infinite (float dims: train.optimizer.lr); 336 points over the others" in stdout
    assert "21 giving every dim each of its values, 64 random with seed 0" in stdout


def test_check_reports_the_choice_that_breaks_the_shapes():
    code, stdout, stderr = _nlc("check", str(SPACES / "mismatch.yaml"))
    assert code == 2
    assert "size: 4 points" in stdout
    assert "do not broadcast" in stderr and "in 2 of the checked points" in stderr
    assert f"graph.2.out=24 ({SPACES / 'mismatch.yaml'}:11:34)" in stderr
    assert "params.hidden" not in stderr.split("e.g. with")[1]  # not a culprit
    assert "1 distinct error(s) among all 4 points" in stderr


@pytest.mark.parametrize(
    "yaml_path",
    [CNN, *(example_specs.EXAMPLES / f"{n}.yaml" for n in example_specs.SPACES)],
    ids=lambda p: p.name,
)
def test_dsl_space_is_the_yaml_space(yaml_path):
    spaces = load_space(yaml_path), load_space(yaml_path.with_suffix(".nlc"))
    strip = [
        [
            (d.name, d.kind, d.choices, d.low, d.high, d.step, d.log, d.parent, d.when)
            for d in s.dims
        ]
        for s in spaces
    ]
    assert strip[0] == strip[1]
    rng = random.Random(2)
    for _ in range(5):
        point = spaces[0].sample(rng)
        assert spaces[0].spec(point).data == spaces[1].spec(point).data


@pytest.mark.parametrize("source", ["cnn.yaml", "cnn.nlc"])
def test_fmt_and_convert_keep_the_space(source, tmp_path):
    """Needs the fmt.py hook of nlc.search.space_format (markers as placeholders)."""
    from nlc.frontend.fmt import read, render

    original = load_space(SPACES / source)
    for suffix in (".yaml", ".nlc"):
        target = tmp_path / f"cnn{suffix}"
        target.write_text(render(read(SPACES / source), suffix == ".nlc"))
        assert render(read(target), suffix == ".nlc") == target.read_text()  # idempotent
        again = load_space(target)
        assert [
            (d.name, d.choices, d.low, d.high, d.log, d.parent, d.when) for d in again.dims
        ] == [(d.name, d.choices, d.low, d.high, d.log, d.parent, d.when) for d in original.dims]
