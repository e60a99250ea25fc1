"""The DARTS supernet of a search space (Liu et al. 2019): every op choice becomes all of its
options side by side, mixed by a `mixed` node whose weights `alpha` are learned.

The supernet is an ordinary spec, written as `supernet.yaml` beside the search's outputs: the
space at a base point (the other dims fixed, `base_values`), in which each op-choice item gives
way to one candidate item per option, named `<item>_<option>` and fed by the item's inputs, and
a `mixed` item under the item's own name that reads them all. An op choice inside a block is
one dim for every instance of the block; each instance gets its own `mixed` node, and the
search shares one `alpha` between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nlc.errors import NlcError
from nlc.frontend import lower
from nlc.frontend.ast import NodeSpec
from nlc.frontend.load import Spec, load_spec
from nlc.ir import Graph
from nlc.search.markers import Dim
from nlc.search.space import Point, Space

SUPERNET_FILE = "supernet.yaml"
Where = tuple[Any, ...]  # a graph in the document: ("graph",) or ("blocks", name, "graph")


@dataclass(frozen=True)
class Choice:
    """One op-choice dim in the supernet: its `mixed` nodes (one per instance of the item) and,
    for each of them, the nodes of each option's candidate."""

    dim: Dim
    nodes: tuple[str, ...]
    candidates: tuple[tuple[tuple[str, ...], ...], ...]  # [mixed node][option] -> node names

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self.dim.choices)


@dataclass
class Supernet:
    spec: Spec
    graph: Graph
    choices: list[Choice]
    values: dict[str, Any]  # a value for every dim: the fixed ones and the op choices' bases


def is_op_choice(dim: Dim) -> bool:
    return dim.kind == "choice" and dim.name.split("#")[0].endswith(".op")


def base_values(space: Space, fixed: Point | None = None) -> dict[str, Any]:
    """A value for every dim: `fixed` where it gives one; else an op choice's first option
    other than identity (so that the item's attributes exist), a choice's first value, an int's
    lowest and a float's midpoint (geometric for a log range), on its step."""
    values: dict[str, Any] = {}
    for dim in space.dims:
        if fixed and dim.name in fixed:
            values[dim.name] = fixed[dim.name]
        elif is_op_choice(dim):
            values[dim.name] = next((o for o in dim.choices if o != "identity"), dim.choices[0])
        elif dim.kind == "choice":
            values[dim.name] = dim.choices[0]
        elif dim.kind == "int":
            values[dim.name] = int(dim.low)  # type: ignore[arg-type]
        else:
            assert dim.low is not None and dim.high is not None
            mid = (dim.low * dim.high) ** 0.5 if dim.log else (dim.low + dim.high) / 2
            if dim.step:
                mid = dim.low + round((mid - dim.low) / dim.step) * dim.step
            values[dim.name] = mid
    return values


def point_of(space: Space, values: dict[str, Any]) -> Point:
    """The point that `values` (a value for every dim) gives: its active dims only."""
    return {dim.name: values[dim.name] for dim in space.active(values)}


def build_supernet(space: Space, dest: Path, fixed: Point | None = None) -> Supernet:
    """Write the supernet of `space` to `dest/supernet.yaml`, load and lower it."""
    values = base_values(space, fixed)
    base = point_of(space, values)
    choices = [d for d in space.active(values) if is_op_choice(d)]
    if not choices:
        raise NlcError(
            f"{space.path} has no op choice for darts to search",
            space.search.at("strategy"),
            "darts searches op choices such as op: {choice: [conv3x3, sepconv3x3, identity]}; "
            "use strategy evolution, tpe or random for other choices",
        )
    dest.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(space.yaml(base, dest))
    doc.pop("passes", None)  # the supernet is searched, not compressed
    places = _places(space.spec(base), choices)
    mixed: dict[tuple[Where, int], Dim] = {}
    for where in sorted({w for w, _ in places.values()}, key=str):
        targets = {i: dim for dim, (w, i) in ((d, places[d.name]) for d in choices) if w == where}
        container = _get(doc, where[:-1])
        first = (
            next(iter(doc["inputs"])) if where == ("graph",) else container.get("inputs", ["x"])[0]
        )
        container["graph"], placed = _rewrite(container["graph"], targets, first)
        mixed |= {(where, i): dim for i, dim in placed.items()}
    path = dest / SUPERNET_FILE
    path.write_text(
        "# The DARTS supernet of the search space (written by nlc search).\n"
        + yaml.safe_dump(doc, sort_keys=False),
        encoding="utf-8",
    )
    spec = load_spec(path)
    items = {_item(spec, where, i).loc: dim for (where, i), dim in mixed.items()}
    try:
        graph = lower(spec)
    except NlcError as e:  # a mixed item is the option choice itself in the user's spec
        dim = items.get(e.loc) if e.loc else None
        if dim is None:
            raise
        raise NlcError(f"darts: {e.message}", dim.loc, e.hint) from None
    return Supernet(spec, graph, _choices(graph, items, choices), values)


def _places(spec: Spec, dims: list[Dim]) -> dict[str, tuple[Where, int]]:
    """Where the item of each op-choice dim is in the concrete document: the items whose `op`
    stands at the dim's marker; copy i of an independent item is the i-th of them."""
    graphs: list[tuple[Where, list[NodeSpec]]] = [(("graph",), spec.ast.graph)]
    graphs += [(("blocks", name, "graph"), b.graph) for name, b in spec.ast.blocks.items()]
    at: dict[Any, list[tuple[Where, int]]] = {}
    for where, items in graphs:
        for i, item in enumerate(items):
            at.setdefault(item.at("op"), []).append((where, i))
    places: dict[str, tuple[Where, int]] = {}
    for dim in dims:
        copy = int(dim.name.rpartition("#")[2]) if "#" in dim.name else 0
        found = at.get(dim.loc, [])
        if copy >= len(found):
            raise NlcError(f"darts: cannot find the item of {dim.name}", dim.loc, None)
        places[dim.name] = found[copy]
    return places


def _get(doc: Any, path: Where) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _item(spec: Spec, where: Where, index: int) -> NodeSpec:
    items = spec.ast.graph if where == ("graph",) else spec.ast.blocks[where[1]].graph
    return items[index]


def _rewrite(
    items: list[Any], targets: dict[int, Dim], first_input: str
) -> tuple[list[Any], dict[int, Dim]]:
    """The graph with each target item replaced by its candidates and a `mixed` item; the
    indices of the mixed items in the new graph."""
    new: list[Any] = []
    placed: dict[int, Dim] = {}
    for idx, item in enumerate(items):
        dim = targets.get(idx)
        if dim is None:
            new.append(item)
            continue
        if "repeat" in item:
            raise NlcError(
                f"darts cannot mix the repeated op choice {dim.name}",
                dim.loc,
                "put the op choice in a block and repeat the block",
            )
        base = item.get("name") or f"choice{idx}"
        inputs = item.get("in") or [_previous(new, idx, first_input)]
        attrs = {k: v for k, v in item.items() if k not in ("op", "name", "in")}
        names = [f"{base}_{option}" for option in dim.choices]
        for option, name in zip(dim.choices, names, strict=True):
            cand = {"op": option, "name": name, "in": inputs}
            new.append(cand if option == "identity" else cand | attrs)
        placed[len(new)] = dim
        new.append({"op": "mixed", "name": base, "in": names})
    return new, placed


def _previous(new: list[Any], idx: int, first_input: str) -> str:
    """The name of the value an item without `in` reads: the previous item's, named if needed."""
    if not new:
        return first_input
    prev = new[-1] if isinstance(new[-1], dict) else {"op": new[-1]}
    prev.setdefault("name", f"darts_in{idx}")
    new[-1] = prev
    return prev["name"]


def _choices(graph: Graph, items: dict[Any, Dim], dims: list[Dim]) -> list[Choice]:
    nodes: dict[str, list[str]] = {d.name: [] for d in dims}
    for node in graph:
        if node.op == "mixed" and node.loc in items:
            nodes[items[node.loc].name].append(node.name)
    choices = []
    for dim in dims:
        per_node = tuple(
            tuple(
                tuple(n.name for n in graph if n.name == c or n.name.startswith(c + "."))
                for c in (f"{name}_{option}" for option in dim.choices)
            )
            for name in nodes[dim.name]
        )
        choices.append(Choice(dim, tuple(nodes[dim.name]), per_node))
    return choices
