"""`nlc search` end to end on cost-only objectives (no training, so fast): resuming after a
kill, two workers on one sqlite study, the outputs, and `nlc search status`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_search_engine import write_space
from typer.testing import CliRunner

from nlc.api import build
from nlc.cli import app
from nlc.search.space import load_space
from nlc.search.study import DB_FILE, default_storage, make_setup, run

COST_ONLY = """search:
  strategy: evolution
  trials: 8
  seed: 5
  objectives: [{minimize: macs}, {minimize: latency(rx580)}]
  evolution: {population: 3, sample: 2}
"""


def nlc(*args: str):
    return CliRunner().invoke(app, list(args))


def trials_of(out: Path) -> list[optuna.trial.FrozenTrial]:
    storage = default_storage(out)
    (name,) = optuna.study.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_search_writes_a_buildable_front_and_status_reads_it(tmp_path):
    spec = write_space(tmp_path, COST_ONLY)
    out = tmp_path / "out"
    result = nlc("search", str(spec), "-o", str(out), "--trials", "5")
    assert result.exit_code == 0, result.output
    assert "trial   4 complete" in result.output and "| 5/5" in result.output
    data = json.loads((out / "pareto.json").read_text())
    assert data["trials"] == {"complete": 5}
    assert data["hypervolume"] > 0
    members = sorted((out / "front").glob("*.yaml"))
    assert len(members) == len(data["front"]) >= 1
    assert "| 0 |" in (out / "pareto.md").read_text()
    for n in (0, 4):
        folder = out / "trials" / str(n)
        assert {"spec.yaml", "cost.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    package = build(members[0], tmp_path / "build", onnx=False)
    assert (package / "tiny_space" / "model.py").is_file()
    status = nlc("search", "status", str(out))
    assert status.exit_code == 0, status.output
    assert "5 complete" in status.output
    write_space(tmp_path, COST_ONLY.replace("minimize: macs", "minimize: params"))
    changed = nlc("search", str(spec), "-o", str(out))
    assert changed.exit_code == 2
    assert "has other objectives: minimize macs, minimize latency(rx580)" in changed.output


def test_killed_search_continues_without_rerunning_finished_trials(tmp_path):
    spec = write_space(tmp_path, COST_ONLY.replace("trials: 8", "trials: 20"))
    out = tmp_path / "out"
    cli = "from nlc.cli import app; app()"
    command = [sys.executable, "-c", cli, "search", str(spec), "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if (out / DB_FILE).is_file() and _complete(out) >= 3:
                break
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    first = {t.number: t.values for t in trials_of(out) if t.state == TrialState.COMPLETE}
    assert 3 <= len(first) < 20
    stamps = {n: (out / "trials" / str(n) / "cost.json").stat().st_mtime_ns for n in first}

    result = nlc("search", str(spec), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"{len(first)} of 20 trials done" in result.output
    trials = trials_of(out)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 20
    for n, values in first.items():  # finished trials kept, never run again
        assert trials[n].values == values
        assert (out / "trials" / str(n) / "cost.json").stat().st_mtime_ns == stamps[n]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("interrupted") for t in interrupted)
    for t in interrupted:  # the point a kill cut short ran again, later (a kill mid-suggest
        # leaves only the dims drawn so far: the rerun keeps those and draws the rest)
        assert any(t.params.items() <= c.params.items() and c.number > t.number for c in trials)


def test_recover_fails_a_stale_trial_and_enqueues_its_point(tmp_path):
    import optuna

    from nlc.search.study import recover

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    stale = study.ask()
    stale.suggest_int("width", 8, 64)
    assert recover(study) == 1
    (failed, waiting) = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"]
    assert waiting.state == TrialState.WAITING
    assert waiting.system_attrs["fixed_params"] == failed.params  # what the rerun will suggest
    assert recover(study) == 0  # nothing running any more


def _complete(out: Path) -> int:
    try:
        return sum(t.state == TrialState.COMPLETE for t in trials_of(out))
    except Exception:  # the study is still being created
        return 0


def test_two_workers_share_one_study_without_duplicates(tmp_path):
    spec = write_space(tmp_path, COST_ONLY.replace("strategy: evolution", "strategy: random"))
    out = tmp_path / "out"
    result = nlc("search", str(spec), "-o", str(out), "--workers", "2", "--trials", "6")
    assert result.exit_code == 0, result.output
    trials = trials_of(out)
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 6
    assert len({t.number for t in trials}) == len(trials)
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(
        str(t.number) for t in counted
    )


@pytest.mark.parametrize("strategy", ["random", "tpe", "nsga2"])
def test_optuna_strategies_propose_points_of_the_space(tmp_path, strategy):
    spec = write_space(tmp_path, COST_ONLY)
    setup = make_setup(spec, {}, {"strategy": strategy, "trials": 6}, tmp_path / "out", None)
    study = run(setup, 1, lambda line: None)
    space = load_space(spec)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        space.check_point(t.params)
