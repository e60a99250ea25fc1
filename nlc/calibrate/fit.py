"""Fit a target's efficiencies, bandwidths and overheads to measured times of analysed graphs.

The residuals are log(predicted / measured), so relative errors count the same for a 5 us
kernel and a 50 ms model, under a soft L1 loss, so that a few timings the model cannot
express (or that other processes disturbed) pull the fit less than under squares. Some
figures move together (launch and call overheads, compute and memory terms of one node), so
the fit is a Levenberg-Marquardt least-squares search over all of them at once, in
coordinates that keep each figure within its bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nlc.analysis.cost import Cost, retimed
from nlc.targets import COSTED_CLASSES, Target

SOFT = 0.05  # log errors well below it count squared, well above it absolutely
STEP = 1e-4  # of the numerical derivatives, in unbounded coordinates


@dataclass(frozen=True)
class Knob:
    """A figure the fit sets, within bounds, on a log scale unless `linear`: a Target field,
    or an entry of a per-op-class one (`efficiency.matmul`; absent entries read as 0)."""

    name: str
    low: float
    high: float
    linear: bool = False

    def get(self, target: Target) -> float:
        field, _, key = self.name.partition(".")
        value = getattr(target, field)
        return value.get(key, 0.0) if key else value

    def set(self, target: Target, value: float) -> Target:
        field, _, key = self.name.partition(".")
        if key:
            return target.model_copy(update={field: {**getattr(target, field), key: value}})
        return target.model_copy(update={field: value})


# Figures every fit sets; efficiencies and node overheads are added per op class (`knobs`).
FIGURES: tuple[Knob, ...] = (
    Knob("memory_bandwidth_gbs", 1.0, 5000.0),
    Knob("cache_bandwidth_gbs", 1.0, 20000.0),
    Knob("launch_overhead_us", 0.01, 200.0),
    Knob("call_overhead_us", 0.01, 1000.0),
    Knob("overlap", 0.0, 1.0, linear=True),
)


@dataclass(frozen=True)
class Sample:
    """An analysed graph and the measured seconds of one forward pass."""

    name: str
    cost: Cost
    seconds: float


def log_error(target: Target, sample: Sample) -> float:
    """log(predicted / measured) of one sample."""
    return math.log(retimed(sample.cost, target) / sample.seconds)


def knobs(samples: Sequence[Sample]) -> list[Knob]:
    """The knobs the samples can tell anything about: the efficiency of each op class they
    compute in, the node overhead of each op class with nodes of several launches (where it
    differs from launch overhead), and the FIGURES."""
    nodes = [n for s in samples for n in s.cost.nodes]
    computing = {c for n in nodes for c, f in n.work.items() if f}
    composite = {n.op_class for n in nodes if n.launches > 1}
    return [
        *(Knob(f"efficiency.{c}", 1e-3, 1.0) for c in COSTED_CLASSES if c in computing),
        *(Knob(f"node_overhead_us.{c}", 1e-3, 1000.0) for c in COSTED_CLASSES if c in composite),
        *FIGURES,
    ]


def fit(
    target: Target,
    samples: Sequence[Sample],
    chosen: Sequence[Knob] | None = None,
    iterations: int = 200,
    tol: float = 1e-7,
) -> Target:
    """`target` with the `chosen` knobs (default: `knobs(samples)`) set to minimise the soft
    L1 loss of the log errors; the other figures are kept. Each step solves the least-squares
    problem weighted as the soft L1 loss asks (iteratively reweighted least squares), with a
    numerical Jacobian; it stops after `iterations` or when a step gains less than `tol`."""
    chosen = knobs(samples) if chosen is None else chosen
    x = np.array([_unbounded(k, k.get(target)) for k in chosen])

    def residuals(x: np.ndarray) -> np.ndarray:
        t = _with(target, chosen, x)
        return np.array([log_error(t, s) for s in samples])

    r = residuals(x)
    damping = 1e-3
    for _ in range(iterations):
        weights = 1 / np.sqrt(1 + (r / SOFT) ** 2)
        jacobian = np.empty((len(r), len(x)))
        for j in range(len(x)):
            dx = np.zeros_like(x)
            dx[j] = STEP
            jacobian[:, j] = (residuals(x + dx) - r) / STEP
        a = jacobian.T @ (weights[:, None] * jacobian)
        g = jacobian.T @ (weights * r)
        current = _soft_l1(r)
        # Marquardt's scaling, with a floor for knobs the samples barely move.
        scale = np.diag(np.maximum(np.diag(a), 1e-6 * np.trace(a) / len(x)))
        while damping < 1e10:
            step = np.linalg.solve(a + damping * scale, -g)
            trial = residuals(x + step)
            if _soft_l1(trial) < current:
                x, r, damping = x + step, trial, damping / 3
                break
            damping *= 4
        else:
            break
        if current - _soft_l1(r) < tol:
            break
    return _with(target, chosen, x)


def _soft_l1(r: np.ndarray) -> float:
    return float(np.sum(np.sqrt(1 + (r / SOFT) ** 2) - 1))


def _unbounded(knob: Knob, value: float) -> float:
    """The coordinate whose logistic function maps to `value` between the knob's bounds (on
    its scale); values at or past a bound start just inside it."""
    lo, hi, v = (
        (knob.low, knob.high, value)
        if knob.linear
        else map(math.log, (knob.low, knob.high, max(value, knob.low)))
    )
    u = min(max((v - lo) / (hi - lo), 1e-4), 1 - 1e-4)
    return math.log(u / (1 - u))


def _bounded(knob: Knob, x: float) -> float:
    u = 1 / (1 + math.exp(-min(max(x, -40.0), 40.0)))
    if knob.linear:
        return knob.low + u * (knob.high - knob.low)
    return knob.low * (knob.high / knob.low) ** u


def _with(target: Target, chosen: Sequence[Knob], x: np.ndarray) -> Target:
    for knob, xi in zip(chosen, x, strict=True):
        target = knob.set(target, _bounded(knob, float(xi)))
    return target
