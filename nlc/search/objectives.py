"""The metrics a search optimises and constrains, parsed from the `search:` section, and their
values for one concrete graph.

A metric is a validation metric the generated train.py logs (`val_accuracy`, `val_loss`, ...),
a zero-cost proxy (`synflow`, `naswot`, `grad_norm`) or a cost from the cost model:
`latency(TARGET)` and `latency(TARGET, batch=N)` in ms, `params`, `macs`, and
`memory(TARGET, train|infer, batch=N)` in bytes. A constraint is `METRIC <= VALUE` (or `<`,
`>=`, `>`) with an optional unit: `5ms`, `200us`, `100k`, `1.5M`, `6GB`, `512MB`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nlc.errors import NlcError, SourceLoc, did_you_mean
from nlc.frontend.search_ast import SearchSpec
from nlc.ir import Graph

if TYPE_CHECKING:
    from nlc.search.space import Space

Kind = Literal["val", "proxy", "latency", "params", "macs", "memory"]
PROXIES = ("synflow", "naswot", "grad_norm")
COUNTS = ("params", "macs")
VAL_METRICS = ("val_accuracy", "val_loss", "val_perplexity", "val_mae", "val_rmse")
EXAMPLES = (
    "val_accuracy, val_loss, synflow, latency(rx580), params, macs, memory(rx580, train, batch=64)"
)

_CALL = re.compile(r"^(latency|memory)\s*\((.*)\)$")
_CONSTRAINT = re.compile(r"^(.+?)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*([A-Za-z]*)$")
_TIME = {"s": 1e3, "ms": 1.0, "us": 1e-3}  # to ms
_BYTES = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_COUNT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


@dataclass(frozen=True)
class Metric:
    """One metric; `name` is its normalized text, the key of trial metrics and reports."""

    kind: Kind
    name: str
    target: str | None = None
    batch: int | None = None
    train: bool = False  # memory: a training step (else inference)

    @property
    def unit(self) -> str:
        return {"latency": "ms", "memory": "B"}.get(self.kind, "")


@dataclass(frozen=True)
class Constraint:
    metric: Metric
    op: str
    value: float  # in the metric's unit (ms, bytes, counts)
    text: str

    def holds(self, value: float) -> bool:
        return {
            "<=": value <= self.value,
            "<": value < self.value,
            ">=": value >= self.value,
            ">": value > self.value,
        }[self.op]


@dataclass(frozen=True)
class Goals:
    """The parsed objectives (with their directions) and constraints of a search."""

    objectives: list[Metric]
    directions: list[Literal["maximize", "minimize"]]
    constraints: list[Constraint]

    @property
    def costs(self) -> list[Metric]:
        """Cost-model metrics: every objective and constraint one, plus params and MACs."""
        named = [*self.objectives, *(c.metric for c in self.constraints)]
        costs = [Metric("params", "params"), Metric("macs", "macs")]
        costs += [m for m in named if m.kind in ("latency", "memory")]
        return list(dict.fromkeys(costs))

    @property
    def trains(self) -> bool:
        return any(m.kind == "val" for m in self.objectives)

    @property
    def proxies(self) -> list[str]:
        return [m.name for m in self.objectives if m.kind == "proxy"]

    @property
    def targets(self) -> list[str]:
        """Targets named by the objectives and constraints, in order."""
        named = [*self.objectives, *(c.metric for c in self.constraints)]
        return list(dict.fromkeys(m.target for m in named if m.target))


def parse_metric(text: str, loc: SourceLoc | None) -> Metric:
    from nlc.targets import load_target

    text = " ".join(text.split())
    call = _CALL.match(text)
    if call is None:
        if text in PROXIES:
            return Metric("proxy", text)
        if text in COUNTS:
            return Metric(text, text)  # type: ignore[arg-type]
        if re.fullmatch(r"val_[a-z0-9_]+", text):
            return Metric("val", text)
        known = [*VAL_METRICS, *PROXIES, *COUNTS, "latency", "memory"]
        raise NlcError(
            f"unknown search metric {text!r}",
            loc,
            did_you_mean(text, known) or f"metrics: {EXAMPLES}",
        )
    kind, args = call.group(1), [a.strip() for a in call.group(2).split(",") if a.strip()]
    if not args:
        raise NlcError(f"{text}: name a target", loc, f"e.g. {kind}(rx580)")
    target, rest = args[0], args[1:]
    try:
        load_target(target)
    except NlcError as e:
        raise NlcError(f"{text}: {e.message}", loc, e.hint) from None
    batch, train = None, False
    for arg in rest:
        key, sep, value = (s.strip() for s in arg.partition("="))
        if sep and key == "batch" and value.isdigit() and int(value) > 0:
            batch = int(value)
        elif kind == "memory" and not sep and arg in ("train", "infer"):
            train = arg == "train"
        else:
            form = (
                "latency(TARGET, batch=N)"
                if kind == "latency"
                else ("memory(TARGET, train|infer, batch=N)")
            )
            raise NlcError(f"{text}: bad argument {arg!r}", loc, f"write {form}")
    name = f"{kind}({target}" + (", train" if train else ", infer") * (kind == "memory")
    name += f", batch={batch})" if batch else ")"
    return Metric(kind, name, target, batch, train)  # type: ignore[arg-type]


def parse_constraint(text: str, loc: SourceLoc | None) -> Constraint:
    match = _CONSTRAINT.match(text.strip())
    if match is None:
        raise NlcError(
            f"constraint {text!r} is not METRIC <= VALUE",
            loc,
            "e.g. 'latency(rx580) <= 5ms', 'params <= 100k', 'memory(rtx2060, train, batch=64) "
            "<= 6GB'",
        )
    left, op, number, unit = match.groups()
    metric = parse_metric(left, loc)
    if metric.kind == "val":
        raise NlcError(
            f"constraint {text!r}: constraints are checked before training, on the cost model",
            loc,
            "make a validation metric an objective instead",
        )
    try:
        value = float(number)
    except ValueError:
        raise NlcError(f"constraint {text!r}: {number!r} is not a number", loc) from None
    scales = {"latency": _TIME, "memory": _BYTES}.get(metric.kind, _COUNT)
    if not unit and metric.kind in ("latency", "memory"):
        example = "5ms or 200us" if metric.kind == "latency" else "6GB or 512MB"
        raise NlcError(f"constraint {text!r}: give the unit", loc, f"e.g. {example}")
    if unit.lower() not in scales or (metric.kind == "latency" and unit not in _TIME):
        units = ", ".join(k for k in scales if k)
        raise NlcError(
            f"constraint {text!r}: unit {unit!r} does not fit {metric.name}",
            loc,
            f"units for {metric.kind}: {units}",
        )
    return Constraint(metric, op, value * scales[unit.lower()], text.strip())


def parse_goals(search: SearchSpec) -> Goals:
    """The objectives and constraints of a `search:` section; errors at their spec lines."""
    objectives = [parse_metric(o.metric, o.at(o.direction)) for o in search.objectives]
    names = [m.name for m in objectives]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise NlcError(f"objective {name!r} is named twice", search.at("objectives", i), None)
    constraints = [
        parse_constraint(text, search.at("constraints", i))
        for i, text in enumerate(search.constraints)
    ]
    return Goals(objectives, [o.direction for o in search.objectives], constraints)


def check_goals(search: SearchSpec, has_train: bool) -> Goals:
    """`parse_goals`, and a validation-metric objective needs a `train:` section."""
    goals = parse_goals(search)
    for i, (o, m) in enumerate(zip(search.objectives, goals.objectives, strict=True)):
        if m.kind == "val" and not has_train:
            raise NlcError(
                f"objective {m.name} needs training, and the spec has no `train:` section",
                search.at("objectives", i),
                "add `train: {}` (digits classification by default), or optimise a proxy "
                "(synflow) or a cost",
            )
        if m.kind == "val" and search.strategy != "darts" and m.name not in VAL_METRICS:
            if not re.fullmatch(r"val_top\d+", m.name):
                raise NlcError(
                    f"objective {m.name}: the generated train.py does not log it",
                    o.at(o.direction),
                    did_you_mean(m.name, VAL_METRICS) or f"e.g. {', '.join(VAL_METRICS)}",
                )
    return goals


def check_search(space: Space, settings: SearchSpec | None = None) -> Goals:
    """The goals of a space's `search:` section (or of `settings`, the section with command
    line overrides), checked: for `nlc check` and `nlc search`."""
    import random

    settings = settings or space.search
    has_train = space.spec(space.sample(random.Random(0))).ast.train is not None
    return check_goals(settings, has_train)


def cost_metrics(graph: Graph, metrics: list[Metric]) -> dict[str, float]:
    """The cost-model values of `metrics` (ms, bytes, counts) for a lowered graph."""
    from nlc.analysis.cost import BATCH, analyze
    from nlc.analysis.counts import node_counts
    from nlc.targets import load_target

    symbols = graph.meta.get("symbols", [])
    values: dict[str, float] = {}
    cache: dict[tuple[str, int | None], object] = {}
    for m in metrics:
        if m.kind == "params":
            values[m.name] = graph.num_params()
            continue
        if m.kind == "macs":  # at batch 1
            values[m.name] = sum(r.macs for r in node_counts(graph, dict.fromkeys(symbols, 1)))
            continue
        key = (m.target or "cpu", m.batch)
        if key not in cache:
            dims = {BATCH: m.batch} if m.batch and BATCH in symbols else {}
            cache[key] = analyze(graph, load_target(key[0]), dims)
        cost = cache[key]
        if m.kind == "latency":
            values[m.name] = cost.latency * 1e3  # type: ignore[attr-defined]
        elif m.kind == "memory":
            precision = cost.precisions[0]  # type: ignore[attr-defined]
            values[m.name] = (precision.training if m.train else precision.inference).total
    return values
