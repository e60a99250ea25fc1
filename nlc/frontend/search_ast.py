"""The `search:` section of a spec (or of a pipeline file): what `nlc search` optimises and how.

The choices themselves sit where the values they replace would be (`{choice: [32, 64]}` as a
param, an attribute, an op or a repeat count); this section names the objectives, the
constraints, the strategy and the budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nlc.frontend.spec_item import SpecItem

Strategy = Literal["random", "tpe", "nsga2", "evolution", "darts"]


class ObjectiveSpec(SpecItem):
    """One objective: a metric to maximize or minimize."""

    noun, example = "objective", "{minimize: latency(rx580)}, or {maximize: val_accuracy}"

    maximize: str | None = Field(
        None, description="a validation metric (val_accuracy) or a zero-cost proxy (synflow)"
    )
    minimize: str | None = Field(
        None,
        description="a validation metric (val_loss) or a cost: latency(TARGET), params, macs, "
        "memory(TARGET, train|infer, batch=N)",
    )

    @model_validator(mode="after")
    def _one(self) -> ObjectiveSpec:
        if (self.maximize is None) == (self.minimize is None):
            raise ValueError("an objective names exactly one of maximize or minimize")
        return self

    @property
    def metric(self) -> str:
        return self.maximize if self.maximize is not None else self.minimize  # type: ignore[return-value]

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.maximize is not None else "minimize"


class BudgetSpec(SpecItem):
    """How long each trial trains (overrides the train section's epochs or steps)."""

    noun, example = "trial budget", "{steps: 200}, or {epochs: 2, seconds: 60}"

    epochs: int | None = Field(None, gt=0, description="training epochs per trial")
    steps: int | None = Field(None, gt=0, description="optimizer steps per trial")
    seconds: float | None = Field(None, gt=0, description="wall-clock limit per trial")


class EvolutionSpec(SpecItem):
    """Regularized (aging) evolution settings."""

    noun, example = "evolution settings", "{population: 16, sample: 4}"

    population: int = Field(
        16, ge=2, description="the living population (oldest dies first); also NSGA-II's"
    )
    sample: int = Field(4, ge=1, description="tournament size: the best of this many is mutated")


class DartsSpec(SpecItem):
    """Differentiable search settings (op-choice spaces only)."""

    noun, example = "darts settings", "{epochs: 10, latency_weight: 0.1}"

    epochs: int = Field(10, gt=0, description="supernet training epochs")
    arch_lr: float = Field(3e-4, gt=0, description="learning rate of the architecture weights")
    latency_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the expected latency (ms, on the first target) in the loss",
    )


class SearchSpec(SpecItem):
    """What `nlc search` optimises, under which constraints, how and for how long."""

    noun, example = "search section", "{strategy: evolution, trials: 40, objectives: [...]}"

    strategy: Strategy = Field("evolution", description="how points of the space are proposed")
    trials: int = Field(32, gt=0, description="trials in the study, all workers together")
    seed: int = Field(0, description="seed of the sampler (and of each trial's training)")
    objectives: list[ObjectiveSpec] = Field(
        default_factory=lambda: [ObjectiveSpec(maximize="val_accuracy")],
        min_length=1,
        description="one objective, or several for a Pareto front",
    )
    constraints: list[str] = Field(
        [],
        description="checked on the cost model before training, e.g. 'latency(rx580) <= 5ms', "
        "'params <= 100k', 'memory(rtx2060, train, batch=64) <= 6GB'",
    )
    budget: BudgetSpec = Field(BudgetSpec(), description="training per trial")
    pruner: Literal["none", "median", "hyperband"] = Field(
        "median", description="stops trials whose validation curve falls behind"
    )
    evolution: EvolutionSpec = Field(EvolutionSpec(), description="strategy evolution")
    darts: DartsSpec = Field(DartsSpec(), description="strategy darts")
