"""Regularized (aging) evolution (Real et al. 2019) as an Optuna sampler over whole points.

Optuna asks a sampler for one parameter at a time, and a define-by-run space only reveals its
conditional parameters as earlier ones are drawn, so the relative-sampling hooks cannot propose
a whole architecture. Instead, `before_trial` decides the trial's whole point (a random one
while fewer than `population` trials have completed, else a mutation of a tournament winner
among the `population` most recently completed) and `sample_independent` answers every
`suggest` from it. The state is the study's completed trials (from the storage) and each
trial's seed (search seed and trial number), so a resumed study evolves the same way as one
process; workers sharing a storage draw from the same rules, though which trials have completed
when a worker proposes depends on timing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nlc.search.pareto import crowding, minimized, ranks
from nlc.search.space import Point, Space


class EvolutionSampler(BaseSampler):
    def __init__(self, space: Space, population: int, sample: int, seed: int = 0) -> None:
        self.space, self.population, self.sample, self.seed = space, population, sample, seed
        self._points: dict[int, Point] = {}  # trial number -> its point, while it runs
        self._fallback = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._points[trial.number] = self.propose(study, trial.number)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        point = self._points.get(trial.number)
        if point is None or param_name not in point:  # not a dim of the space: never mutated
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        return point[param_name]

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._points.pop(trial.number, None)

    def propose(self, study: Study, number: int) -> Point:
        """The point of trial `number`: random, or a mutated tournament winner."""
        rng = random.Random(self.seed * 1_000_003 + number)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done = [t for t in done if t.number < number]  # what a lone worker would have seen
        if len(done) < self.population:
            return self.space.sample(rng)
        alive = sorted(done, key=lambda t: t.number)[-self.population :]
        contenders = rng.sample(alive, min(self.sample, len(alive)))
        parent = contenders[self._winner(study, contenders)]
        return self.space.mutate(dict(parent.params), rng)

    @staticmethod
    def _winner(study: Study, contenders: list[FrozenTrial]) -> int:
        """Index of the best contender: by value, or by non-domination rank then crowding
        distance (both among the contenders) with several objectives."""
        directions = [d.name.lower() for d in study.directions]
        points = [minimized(t.values, directions) for t in contenders]
        rank = ranks(points)
        spread = crowding(points)
        return min(range(len(points)), key=lambda i: (rank[i], -spread[i], points[i]))
