"""The search engine in process: metrics and constraints, the Pareto helpers, the evolution
sampler, and trials that are infeasible or crash."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from nlc.errors import NlcError
from nlc.frontend.search_ast import SearchSpec
from nlc.search.evolution import EvolutionSampler
from nlc.search.objectives import check_search, parse_constraint, parse_goals, parse_metric
from nlc.search.pareto import crowding, dominates, front, hypervolume, ranks
from nlc.search.space import load_space
from nlc.search.trial import Evaluator

SPACE = """\
nlc: 1
name: tiny_space
params:
  width: {choice: [4, 8, 16]}
inputs:
  x: {shape: [B, 1, 8, 8]}
graph:
  - {op: conv2d, name: stem, out: "${width}", kernel: 3, padding: 1}
  - {op: conv2d, name: extra, out: "${width}", kernel: 3, padding: 1, optional: true}
  - {op: conv2d, name: body, out: {choice: [4, 8, 16]}, kernel: {choice: [1, 3]},
     padding: 0, repeat: {choice: [1, 2, 3]}, independent: true}
  - global_avgpool
  - {op: linear, name: head, out: 10}
outputs: [head]
train: {epochs: 1, batch_size: 64}
search:
  strategy: evolution
  trials: 6
  objectives: [{minimize: params}, {minimize: latency(rx580)}]
"""


def write_space(folder: Path, search: str | None = None, name: str = "space.yaml") -> Path:
    text = SPACE if search is None else SPACE[: SPACE.index("search:")] + search
    path = folder / name
    path.write_text(text)
    return path


def study_for(space, settings: SearchSpec, sampler=None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    directions = [o.direction for o in settings.objectives]
    return optuna.create_study(directions=directions, sampler=sampler)


# -- metrics and constraints ------------------------------------------------------------------


def test_metrics_parse_and_normalize():
    assert parse_metric("latency( rx580 )", None).name == "latency(rx580)"
    m = parse_metric("memory(rtx2060, train, batch=64)", None)
    assert (m.kind, m.target, m.train, m.batch) == ("memory", "rtx2060", True, 64)
    assert parse_metric("synflow", None).kind == "proxy"
    assert parse_metric("val_accuracy", None).kind == "val"


@pytest.mark.parametrize(
    "text, value",
    [
        ("latency(rx580) <= 5ms", 5.0),
        ("latency(rx580) < 200us", 0.2),
        ("params <= 100k", 100e3),
        ("macs <= 1.5M", 1.5e6),
        ("memory(rtx2060, train, batch=64) <= 6GB", 6e9),
        ("memory(rx580, infer) <= 512MB", 512e6),
    ],
)
def test_constraint_units(text, value):
    assert parse_constraint(text, None).value == pytest.approx(value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("latency(rx58) <= 5ms", "did you mean 'rx580'"),
        ("params <= 5ms", "unit 'ms'"),
        ("latency(rx580) <= 5", "give the unit"),
        ("params = 3", "METRIC <= VALUE"),
        ("val_accuracy >= 0.9", "before training"),
        ("paramz <= 3", "did you mean 'params'"),
    ],
)
def test_bad_constraints(text, needle):
    with pytest.raises(NlcError) as e:
        parse_constraint(text, None)
    assert needle in e.value.render()


def test_check_search_reports_an_unknown_target(tmp_path):
    search = (
        "search:\n  objectives:\n    - maximize: val_accuracy\n    - minimize: latency(rx58O)\n"
    )
    space = load_space(write_space(tmp_path, search))
    with pytest.raises(NlcError) as e:
        check_search(space)
    assert "unknown target 'rx58O'" in e.value.message
    assert e.value.hint == "did you mean 'rx580'?"


def test_cost_goals_include_params_macs_and_named_targets():
    goals = parse_goals(
        SearchSpec.model_validate(
            {
                "objectives": [{"maximize": "val_accuracy"}, {"minimize": "latency(rx580)"}],
                "constraints": ["memory(rtx2060, train, batch=8) <= 6GB"],
            }
        )
    )
    assert [m.name for m in goals.costs] == [
        "params",
        "macs",
        "latency(rx580)",
        "memory(rtx2060, train, batch=8)",
    ]
    assert goals.trains and goals.targets == ["rx580", "rtx2060"]


# -- Pareto -----------------------------------------------------------------------------------


def test_hypervolume_of_a_known_front():
    points = [(1.0, 3.0), (2.0, 1.0), (3.0, 3.5), (2.5, 2.0)]  # the last two are dominated
    assert front(points) == [0, 1]
    assert hypervolume(points, (4.0, 4.0)) == pytest.approx(3 + 4)
    assert hypervolume([(5.0, 1.0)], (4.0, 4.0)) == 0.0
    assert hypervolume([(1.0,), (3.0,)], (4.0,)) == 3.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=12))
def test_hypervolume_equals_the_area_of_dominated_cells(points):
    """On an integer grid, the hypervolume counts the unit cells some point dominates."""
    ref = (10, 10)
    cells = sum(
        1 for x in range(10) for y in range(10) if any(px <= x and py <= y for px, py in points)
    )
    assert hypervolume([(float(x), float(y)) for x, y in points], ref) == cells
    rank = ranks(points)
    for i, j in [(i, j) for i in range(len(points)) for j in range(len(points))]:
        if dominates(points[i], points[j]):
            assert rank[i] < rank[j]


def test_crowding_prefers_the_boundary():
    distance = crowding([(0.0, 3.0), (1.0, 2.0), (2.0, 1.0), (3.0, 0.0)])
    assert distance[0] == distance[3] == float("inf") and 0 < distance[1] < float("inf")


# -- the evolution sampler --------------------------------------------------------------------


def test_evolution_points_stay_inside_the_space_and_evolve(tmp_path):
    space = load_space(write_space(tmp_path))
    settings_ = space.search
    sampler = EvolutionSampler(space, population=4, sample=2, seed=3)
    study = study_for(space, settings_, sampler)
    rng = random.Random(0)
    scores = {}

    def objective(trial):
        point = space.suggest(trial)
        space.check_point(point)  # exactly the active dims, each with a legal value
        scores[trial.number] = point
        return rng.random(), float(len(point))

    study.optimize(objective, n_trials=30)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # After the random population, every point is a one-dim mutation of an earlier one.
    for t in trials[4:]:
        parents = [p for n, p in scores.items() if n < t.number]
        assert any(_distance(p, scores[t.number]) <= 1 + 4 for p in parents)
    assert len({tuple(sorted(p.items())) for p in scores.values()}) > 5


def _distance(a: dict, b: dict) -> int:
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b))


def test_evolution_is_deterministic_per_trial(tmp_path):
    space = load_space(write_space(tmp_path))
    points = []
    for _ in range(2):
        sampler = EvolutionSampler(space, population=3, sample=2, seed=1)
        study = study_for(space, space.search, sampler)
        study.optimize(lambda t: (len(space.suggest(t)), 0.0), n_trials=8)
        points.append([t.params for t in study.get_trials()])
    assert points[0] == points[1]


# -- trials -----------------------------------------------------------------------------------


def test_constraint_rejects_without_training(tmp_path):
    search = "search:\n  objectives: [{maximize: val_accuracy}]\n  constraints: ['params <= 100']\n"
    space = load_space(write_space(tmp_path, search))
    goals = check_search(space)
    evaluate = Evaluator(space, space.search, goals, tmp_path / "out")
    study = study_for(space, space.search)
    study.optimize(evaluate, n_trials=3)
    for t in study.get_trials():
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["infeasible"].startswith("violates params <= 100 (params = ")
        folder = tmp_path / "out" / "trials" / str(t.number)
        assert (folder / "cost.json").is_file() and (folder / "spec.yaml").is_file()
        assert not (folder / "package").exists() and not (folder / "train.log").exists()


def test_crashed_training_fails_the_trial_and_the_search_goes_on(tmp_path, monkeypatch):
    import nlc.train.run

    crash = [sys.executable, "-c", "import sys; sys.exit('boom: out of cheese')"]
    monkeypatch.setattr(nlc.train.run, "train_command", lambda *args: list(crash))
    search = "search:\n  objectives: [{maximize: val_accuracy}]\n  pruner: none\n"
    space = load_space(write_space(tmp_path, search))
    evaluate = Evaluator(space, space.search, check_search(space), tmp_path / "out")
    study = study_for(space, space.search)
    study.optimize(evaluate, n_trials=2, catch=(Exception,))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert trials[0].user_attrs["error"] == ("training exited with status 1: boom: out of cheese")


def test_proxies_score_an_untrained_network(tmp_path):
    search = (
        "search:\n  objectives: [{maximize: synflow}, {maximize: naswot}, {minimize: grad_norm}]\n"
    )
    space = load_space(write_space(tmp_path, search))
    evaluate = Evaluator(space, space.search, check_search(space), tmp_path / "out")
    point = {"params.width": 16, "graph.1.optional": True, "graph.2.repeat": 1}
    point |= {"graph.2.out#0": 16, "graph.2.kernel#0": 3}
    synflow, naswot, grad_norm = evaluate(optuna.trial.FixedTrial(point))
    assert synflow > 1 and naswot > 0 and grad_norm > 0
    smaller = {**point, "params.width": 4, "graph.2.out#0": 4, "graph.1.optional": False}
    assert evaluate(optuna.trial.FixedTrial(smaller, number=1))[0] < synflow
