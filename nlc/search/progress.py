"""One progress line per finished trial: its number, state, objectives, the best so far (one
objective) or the front size (several), and the trials done."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from nlc.search.objectives import Goals
from nlc.search.pareto import front, minimized


def fmt(value: float) -> str:
    """Counts with thousands separators, other figures with 4 significant digits."""
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4g}"


class Progress:
    def __init__(self, goals: Goals, log: Callable[[str], None], trials: int) -> None:
        self.goals, self.log, self.trials = goals, log, trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from nlc.search.study import counted, done

        if not counted(trial):
            return
        names = [m.name for m in self.goals.objectives]
        if trial.state == TrialState.COMPLETE:
            detail = ", ".join(f"{n} {fmt(v)}" for n, v in zip(names, trial.values, strict=True))
        else:
            attrs = trial.user_attrs
            detail = attrs.get("infeasible") or attrs.get("error") or "pruned by the pruner"
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(names) == 1 and complete:
            summary = f"best {fmt(study.best_value)} (trial {study.best_trial.number})"
        else:
            points = [minimized(t.values, self.goals.directions) for t in complete]
            summary = f"front {len(front(points))}"
        state = trial.state.name.lower()
        self.log(
            f"trial {trial.number:>3} {state:<8} {detail} | {summary} | {done(study)}/{self.trials}"
        )
