"""A search space: a spec with choice markers, its dimensions, and the concrete spec of a point.

A point maps the name of each dimension active there to its value. Dimensions can be
conditional (`parent`/`when`): the choices inside an optional item exist only when it is on,
copy i of an independent repeated item only when the repeat count is above i.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nlc.errors import NlcError
from nlc.frontend.load import Documents, Spec, load_document, load_spec, validate
from nlc.frontend.search_ast import SearchSpec
from nlc.frontend.spec_item import SpecItem
from nlc.frontend.yaml_source import Positions
from nlc.search.expand import Point, Walk
from nlc.search.markers import Dim, first_marker

if TYPE_CHECKING:
    import optuna

__all__ = ["Dim", "Point", "Space", "load_space"]


class _Source:
    """One document of the space: the spec file, or a pipeline file and the spec it names."""

    def __init__(self, path: Path, data: Any, pos: Positions, pipeline: bool):
        self.path, self.data, self.pos, self.pipeline = path, data, pos, pipeline

    def walk(self, point: Point | None = None) -> Walk:
        walk = Walk(self.data, self.pos, self.pipeline, point)
        walk.data = walk.run()
        return walk


class Space:
    """The dimensions of a spec with choice markers, and the concrete spec of each point."""

    def __init__(
        self, path: Path, sources: list[_Source], search: SearchSpec, overrides: dict[str, Any]
    ):
        self.path, self.search = path, search
        self._sources, self._overrides = sources, overrides
        self.dims: list[Dim] = []
        for source in sources:
            for dim in source.walk().dims:
                if any(d.name == dim.name for d in self.dims):
                    raise NlcError(
                        f"the pipeline and its model spec both search {dim.name}",
                        dim.loc,
                        "search it in one of the two files",
                    )
                self.dims.append(dim)
        self._by_name = {d.name: d for d in self.dims}
        self._children: dict[str | None, list[Dim]] = {}
        for d in self.dims:
            self._children.setdefault(d.parent, []).append(d)

    # -- the shape of the space ---------------------------------------------------------------

    def _on(self, dim: Dim, point: Point) -> bool:
        return dim.parent is None or (dim.parent in point and point[dim.parent] in dim.when)

    def active(self, point: Point) -> list[Dim]:
        """The dims that exist at `point` (parents come first, so one pass decides)."""
        return [d for d in self.dims if self._on(d, point)]

    def size(self) -> int | None:
        """The number of points, or None if a continuous float dim makes it infinite."""
        if any(d.values() is None for d in self.dims):
            return None
        return self.count()

    def count(self) -> int:
        """The number of points, a continuous float dim counted as one value."""
        return self._count(None, ())

    def _count(self, parent: str | None, value: Any) -> int:
        total = 1
        for d in self._children.get(parent, []):
            if parent is None or value in d.when:
                total *= sum(self._count(d.name, v) for v in d.values() or [None])
        return total

    def points(self) -> Iterator[Point]:
        """Every point, in a deterministic order (finite spaces only)."""
        if self.size() is None:
            raise ValueError("a space with continuous float dims has no finite list of points")
        yield from self._points(0, {})

    def _points(self, i: int, point: Point) -> Iterator[Point]:
        if i == len(self.dims):
            yield dict(point)
            return
        dim = self.dims[i]
        if not self._on(dim, point):
            yield from self._points(i + 1, point)
            return
        for v in dim.values() or []:
            point[dim.name] = v
            yield from self._points(i + 1, point)
        del point[dim.name]

    # -- proposing points ---------------------------------------------------------------------

    def sample(self, rng: random.Random) -> Point:
        """A point with each active dim drawn uniformly (log-uniformly for `log` ranges)."""
        point: Point = {}
        for d in self.dims:
            if self._on(d, point):
                point[d.name] = _draw(d, rng)
        return point

    def mutate(self, point: Point, rng: random.Random) -> Point:
        """One active dim of `point` takes another legal value; dims that appear are sampled,
        dims that disappear are dropped. A space with a single point gives it back."""
        movable = [d for d in self.active(point) if _more_than_one(d)]
        if not movable:
            return dict(point)
        dim = rng.choice(movable)
        return self.complete({**point, dim.name: _other(dim, point[dim.name], rng)}, rng)

    def complete(self, values: Point, rng: random.Random) -> Point:
        """The point that keeps `values` where their dims are active and samples the other
        active dims (dropping the rest)."""
        point: Point = {}
        for d in self.dims:
            if self._on(d, point):
                point[d.name] = values[d.name] if d.name in values else _draw(d, rng)
        return point

    def with_value(self, point: Point, dim: Dim, value: Any, rng: random.Random) -> Point:
        """`point` changed so that `dim` is active with `value` (its parents set to make it
        exist where they do not already)."""
        values = {**point, dim.name: value}
        child = dim
        while child.parent is not None:
            parent = self._by_name[child.parent]
            if values.get(parent.name) not in child.when:
                values[parent.name] = rng.choice(child.when)
            child = parent
        return self.complete(values, rng)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Point:
        """Define-by-run: the point an Optuna trial picks, with each dim's name as parameter."""
        point: Point = {}
        for d in self.dims:
            if not self._on(d, point):
                continue
            if d.kind == "choice":
                point[d.name] = trial.suggest_categorical(d.name, list(d.choices))
            elif d.kind == "int":
                point[d.name] = trial.suggest_int(
                    d.name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log
                )
            else:
                point[d.name] = trial.suggest_float(
                    d.name, float(d.low), float(d.high), step=d.step, log=d.log
                )
        return point

    def check_point(self, point: Point) -> None:
        """ValueError unless `point` has exactly the active dims, each with a legal value."""
        active = self.active(point)
        names = {d.name for d in active}
        if set(point) != names:
            extra, missing = sorted(set(point) - names), sorted(names - set(point))
            raise ValueError(f"not a point of the space: extra {extra}, missing {missing}")
        for d in active:
            if not _legal(d, point[d.name]):
                raise ValueError(f"{d.name}: {point[d.name]!r} is not in {d.describe()}")

    # -- concrete specs -----------------------------------------------------------------------

    def documents(self, point: Point) -> Documents:
        """The concrete documents of `point`, by resolved path (for `load_spec`)."""
        self.check_point(point)
        docs: Documents = {}
        for source in self._sources:
            walk = source.walk(point)
            data = walk.data
            if isinstance(data, dict):
                data.pop("search", None)
            docs[source.path.resolve()] = (data, walk.out_pos)
        return docs

    def spec(self, point: Point) -> Spec:
        """The concrete spec at `point`, validated, ready for `nlc.frontend.lower`."""
        return load_spec(self.path, self._overrides, self.documents(point))

    def yaml(self, point: Point, dest: Path) -> str:
        """The concrete spec as YAML for a file in folder `dest` (relative paths rebased)."""
        spec = self.spec(point)
        data = dict(spec.data)
        data.pop("search", None)
        _rebase(data, spec, Path(dest))
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    @property
    def name(self) -> str:
        """The package name every point shares: the pipeline's `name`, else the model's (no
        choice may stand there), without building a point (some may be invalid)."""
        names = [s.data.get("name") for s in self._sources if isinstance(s.data, dict)]
        return next(str(n) for n in names if n is not None)

    def describe(self, point: Point) -> str:
        """`name=value` for each dim of the point, in dim order."""
        return ", ".join(f"{d.name}={point[d.name]!r}" for d in self.active(point))


def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> Space | None:
    """The search space of a spec or pipeline file; None if it has no markers."""
    path = Path(path)
    overrides = dict(overrides or {})
    data, pos = load_document(path, str(path))
    params = {k: v for k, v in overrides.items() if not k.startswith("train.")}
    sources = [_Source(path, data, pos, pipeline=isinstance(data, dict) and "model" in data)]
    if sources[0].pipeline:
        spec_ref = data["model"].get("spec") if isinstance(data["model"], dict) else None
        model_path = path.parent / spec_ref if isinstance(spec_ref, str) else None
        if model_path is not None and model_path.is_file():
            model_data, model_pos = load_document(model_path, str(model_path))
            if isinstance(model_data, dict):  # the pipeline's train section replaces the model's
                model_data.pop("train", None)
            _fix_params(model_data, params)
            sources.append(_Source(model_path, model_data, model_pos, pipeline=False))
        _fix_params(data["model"], params)
    else:
        _fix_params(data, params)
    if all(first_marker(s.data) is None for s in sources):
        return None
    # The pipeline's `search:` section, else its model spec's: validated where it is written.
    holder = next((s for s in sources if isinstance(s.data, dict) and "search" in s.data), None)
    search = SearchSpec()
    if holder is not None:
        search = validate(_SearchSection, {"search": holder.data["search"]}, holder.pos).search
    return Space(path, sources, search, overrides)


class _SearchSection(SpecItem):
    """A document's `search:` section alone, so that its errors get the file's positions."""

    noun = "spec"
    search: SearchSpec


def _fix_params(owner: Any, params: dict[str, Any]) -> None:
    """`--set` values replace the markers of the params they name."""
    if isinstance(owner, dict) and isinstance(owner.get("params"), dict):
        for key, value in params.items():
            if key in owner["params"]:
                owner["params"][key] = value


# -- values of one dim ------------------------------------------------------------------------


def _draw(d: Dim, rng: random.Random) -> Any:
    values = d.values()
    if values is not None and not d.log:
        return rng.choice(values)
    assert d.low is not None and d.high is not None
    if d.log:
        x = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
        return min(max(round(x), int(d.low)), int(d.high)) if d.kind == "int" else x
    return rng.uniform(d.low, d.high)


def _more_than_one(d: Dim) -> bool:
    values = d.values()
    return len(values) > 1 if values is not None else d.low != d.high


def _other(d: Dim, current: Any, rng: random.Random) -> Any:
    """A legal value of `d` other than `current`."""
    values = d.values()
    if values is not None:
        return rng.choice([v for v in values if v != current or type(v) is not type(current)])
    while True:
        x = _draw(d, rng)
        if x != current:
            return x


def _legal(d: Dim, value: Any) -> bool:
    if d.kind == "choice":
        return any(value == c and type(value) is type(c) for c in d.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    assert d.low is not None and d.high is not None
    if not d.low <= value <= d.high:
        return False
    if d.kind == "int":
        return isinstance(value, int) and (value - d.low) % (d.step or 1) == 0
    if d.step is None:
        return True
    n = (value - d.low) / d.step
    return abs(n - round(n)) < 1e-6


def _rebase(data: dict[str, Any], spec: Spec, dest: Path) -> None:
    """Relative file paths of the document, made relative to `dest` instead."""

    def moved(rel: str, root: Path) -> str:
        return os.path.relpath(root / rel, dest) if not os.path.isabs(rel) else rel

    train = data.get("train")
    if isinstance(train, dict):
        source = train.get("data")
        if isinstance(source, dict):
            if isinstance(source.get("path"), str):
                source["path"] = moved(source["path"], spec.data_root)
            for key in ("x", "y"):
                if isinstance(source.get(key), str) and source[key].endswith(".npy"):
                    source[key] = moved(source[key], spec.data_root)
        distill = train.get("distill")
        if isinstance(distill, dict):
            for key in ("teacher", "weights"):
                if isinstance(distill.get(key), str):
                    distill[key] = moved(distill[key], spec.data_root)
    targets = data.get("targets")
    if isinstance(targets, list):
        data["targets"] = [
            moved(t, spec.path.parent)
            if isinstance(t, str) and (spec.path.parent / t).is_file()
            else t
            for t in targets
        ]
