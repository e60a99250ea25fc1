"""The Optuna study of a search: storage, sampler, pruner, the worker loop and resuming.

The study lives in an Optuna storage (by default `DIR/study.db`, sqlite) under the spec's name,
with the spec path, its overrides and the search settings as study attributes, so that a rerun,
another worker or `nlc search status` finds everything there. A study counts its trials as
done when they completed, were pruned (infeasible points included) or crashed; a trial cut
short by a killed process is not done: its point is enqueued again and runs first.
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nlc.errors import NlcError
from nlc.frontend.search_ast import SearchSpec
from nlc.search.objectives import Goals, check_search
from nlc.search.space import Space, load_space

DB_FILE = "study.db"
HEARTBEAT_S = 10  # shared storages: a trial silent for 3 heartbeats belongs to a dead worker
Log = Callable[[str], None]


@dataclass(frozen=True)
class Setup:
    """What every worker needs to rebuild the search; picklable."""

    spec: str  # the spec file
    overrides: dict[str, Any]  # --set
    settings: dict[str, Any]  # --trials/--strategy/--seed over the spec's `search:`
    out: str
    storage: str
    name: str  # the study


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / DB_FILE).resolve()}"


def load(setup: Setup) -> tuple[Space, SearchSpec, Goals]:
    space = load_space(setup.spec, setup.overrides)
    if space is None:
        raise NlcError(
            f"{setup.spec} has no choices: it is a plain spec, not a search space",
            None,
            "write choices where values go, e.g. `width: {choice: [16, 32, 64]}`",
        )
    settings = space.search.model_copy(update=setup.settings)
    return space, settings, check_search(space, settings)


def storage_of(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite:"):  # several local processes: wait for the file lock
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(  # a dead worker's trial fails and its point reruns
        url,
        heartbeat_interval=HEARTBEAT_S,
        grace_period=3 * HEARTBEAT_S,
        failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2),
    )


def open_study(setup: Setup, settings: SearchSpec, space: Space, worker: int = 0) -> optuna.Study:
    return optuna.create_study(
        storage=storage_of(setup.storage),
        study_name=setup.name,
        directions=[o.direction for o in settings.objectives],
        sampler=sampler(settings, space, worker),
        pruner=pruner(settings),
        load_if_exists=True,
    )


def sampler(settings: SearchSpec, space: Space, worker: int) -> optuna.samplers.BaseSampler:
    """The strategy's sampler; Optuna's own get a per-worker seed so that workers differ."""
    seed = settings.seed + 7919 * worker
    strategy = settings.strategy
    if strategy == "evolution":
        from nlc.search.evolution import EvolutionSampler

        evo = settings.evolution
        return EvolutionSampler(space, evo.population, evo.sample, settings.seed)
    if strategy == "tpe":  # group: a TPE per set of dims that occur together
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True
            )
    if strategy == "nsga2":  # conditional dims outside the common part are sampled at random
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=settings.evolution.population
        )
    return optuna.samplers.RandomSampler(seed=seed)  # random, and darts after its derived point


def pruner(settings: SearchSpec) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward the budget: done, running, waiting or crashed; not one
    cut short by a killed worker or started past the budget by a racing worker."""
    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    return True


def done(study: optuna.Study) -> int:
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=finished) if counted(t))


def recover(study: optuna.Study) -> int:
    """Fail the trials a killed local run left running and enqueue their points again;
    how many. Only for sqlite storage, which one `nlc search` at a time uses (other
    databases have heartbeats: a dead worker's trial fails and reruns by itself)."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    waiting = [t.system_attrs.get("fixed_params") for t in queued]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params not in waiting:  # skip_if_exists would see the failed trial itself
            study.enqueue_trial(t.params)
    return len(stale)


class Budget:
    """Stops a worker when the study holds `trials` counted trials (its trial included).
    Enqueued points (DARTS's derived one, a killed run's) are work to do, not trials yet."""

    def __init__(self, trials: int) -> None:
        self.trials = trials

    def full(self, study: optuna.Study, before: int | None = None) -> bool:
        trials = study.get_trials(deepcopy=False)
        live = [
            t
            for t in trials
            if t.state != TrialState.WAITING
            and counted(t)
            and (before is None or t.number < before)
        ]
        return len(live) >= self.trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.full(study):
            study.stop()


class Surplus(Exception):
    """A racing worker started a trial past the budget: it fails unseen and the worker stops."""


def work(setup: Setup, worker: int, log: Log | None) -> None:
    """One worker: run trials until the study holds its budget of trials."""
    from nlc.search.progress import Progress
    from nlc.search.trial import Evaluator

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space, settings, goals = load(setup)
    study = open_study(setup, settings, space, worker)
    budget = Budget(settings.trials)
    if budget.full(study):
        return
    evaluate = Evaluator(space, settings, goals, Path(setup.out))

    def objective(trial: optuna.Trial) -> float | list[float]:
        if budget.full(study, before=trial.number):
            trial.set_user_attr("surplus", True)
            study.stop()
            raise Surplus
        return evaluate(trial)

    progress = Progress(goals, log or (lambda line: None), settings.trials)
    # n_trials bounds a worker whose trials keep failing uncounted; the budget stops it first.
    study.optimize(
        objective, n_trials=settings.trials, callbacks=[budget, progress], catch=(Exception,)
    )


def _worker(setup: Setup, worker: int) -> None:
    """A spawned worker process: a user error is one message and exit status 2."""
    try:
        work(setup, worker, print)
    except NlcError as e:
        print(e.render(), file=sys.stderr)
        sys.exit(2)


def run(setup: Setup, workers: int, log: Log) -> optuna.Study:
    """Create or continue the study, then run `workers` processes (this one when 1)."""
    space, settings, _ = load(setup)
    Path(setup.out).mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = open_study(setup, settings, space)
    goals_text = [f"{o.direction} {o.metric}" for o in settings.objectives]
    if study.user_attrs.get("objectives", goals_text) != goals_text:
        raise NlcError(
            f"study {setup.name} in {setup.storage} has other objectives: "
            + ", ".join(study.user_attrs["objectives"]),
            None,
            "start the changed search in another folder (-o DIR)",
        )
    study.set_user_attr("objectives", goals_text)
    study.set_user_attr("spec", str(Path(setup.spec).resolve()))
    study.set_user_attr("overrides", setup.overrides)
    study.set_user_attr("settings", setup.settings)
    if setup.storage.startswith("sqlite:") and (n := recover(study)):
        log(f"{n} trial(s) cut short by an earlier run: running them again")
    before = done(study)
    if before:
        log(f"continuing study {setup.name}: {before} of {settings.trials} trials done")
    if settings.strategy == "darts" and "darts" not in study.user_attrs:
        from nlc.search.darts import derive

        point = derive(space, Path(setup.out) / "darts", log)
        study.set_user_attr("darts", point)
        study.enqueue_trial(point)
    if workers == 1:
        work(setup, 0, log)
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker, args=(setup, i)) for i in range(workers)]
        for p in processes:
            p.start()
        for p in processes:
            p.join()
        failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode]
        if failed:
            raise NlcError(
                "search worker(s) failed: "
                + ", ".join(f"worker {i} exited with status {code}" for i, code in failed),
                None,
                "their errors are printed above; rerun the command to continue the study",
            )
    return study


def make_setup(
    spec: Path,
    overrides: dict[str, Any],
    settings: dict[str, Any],
    out: Path | None,
    storage: str | None,
) -> Setup:
    """The setup of `nlc search SPEC`: the study is named after the spec, its folder defaults
    to search/<name> and its storage to sqlite in that folder."""
    space, _, _ = load(Setup(str(spec), overrides, settings, "", "", ""))
    name = space.name
    out = out or Path("search") / name
    return Setup(str(spec), overrides, settings, str(out), storage or default_storage(out), name)


def reopen(out: Path, storage: str | None) -> tuple[optuna.Study, Setup]:
    """The study of a search folder (or of `storage`) and the setup it was started with."""
    url = storage or default_storage(out)
    if storage is None and not (out / DB_FILE).is_file():
        raise NlcError(
            f"{out} holds no search ({DB_FILE} is missing)",
            None,
            "nlc search SPEC -o DIR starts one",
        )
    names = optuna.study.get_all_study_names(storage_of(url))
    if len(names) != 1:
        raise NlcError(
            f"{url} holds {len(names)} studies: {', '.join(names) or 'none'}",
            None,
            "give the folder of one search",
        )
    study = optuna.load_study(study_name=names[0], storage=storage_of(url))
    attrs = study.user_attrs
    setup = Setup(attrs["spec"], attrs["overrides"], attrs["settings"], str(out), url, names[0])
    return study, setup
