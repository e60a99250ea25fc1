"""Walk a spec document with choice markers: collect its dimensions, or write the concrete
document of one point of the space (with source positions, so errors point at the spec).

Both jobs are one walk so that a dimension's name is the same in either: the document path
joined by ".", `#i` for copy i of an `independent` repeated item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nlc.errors import NlcError, did_you_mean
from nlc.frontend.yaml_source import Path_, Positions
from nlc.ops import REGISTRY
from nlc.search.markers import ITEM_FLAGS, Dim, kind_of, make_dim

Point = dict[str, Any]

# Where a marker cannot stand (names, references, shapes, the search section itself).
_FIXED_MODEL = {"nlc", "name", "include", "inputs", "outputs", "targets", "dims", "search"}
_FIXED_PIPELINE = {"name", "search"}
_FIXED_BLOCK = {"params", "inputs", "outputs"}
_FIXED_ITEM = {"name", "in"}


@dataclass(frozen=True)
class _Ctx:
    parent: str | None = None  # the dimension deciding whether this part of the document exists
    when: tuple[Any, ...] = ()
    suffix: str = ""  # "#i" inside copy i of an independent item


class Walk:
    """One pass over a document. With `point` None it collects dims into `dims`; else it returns
    the concrete document for `point` and fills `out_pos` with positions in the source."""

    def __init__(self, data: Any, pos: Positions, pipeline: bool, point: Point | None = None):
        self.data, self.pos, self.pipeline, self.point = data, pos, pipeline, point
        self.dims: list[Dim] = []
        self.out_pos = Positions(pos.file)
        blocks = data.get("blocks") if isinstance(data, dict) else None
        self.blocks = set(blocks) if isinstance(blocks, dict) else set()
        self.open_names = isinstance(data, dict) and bool(data.get("include"))
        # Per graph: names of expanded independent items -> their last copy (for `outputs:`).
        self.renames: dict[Path_, dict[str, str]] = {}

    @property
    def collecting(self) -> bool:
        return self.point is None

    def run(self) -> Any:
        return self.value(self.data, (), (), _Ctx())

    # -- generic values ---------------------------------------------------------------------

    def value(self, v: Any, path: Path_, out: Path_, ctx: _Ctx) -> Any:
        self._place(path, out)
        if kind_of(v):
            self._check_allowed(path)
            return self.marker(v, path, ctx)
        if isinstance(v, list):
            if self._is_graph(path):
                return self.graph(v, path, out, ctx)
            return [self.value(x, (*path, i), (*out, i), ctx) for i, x in enumerate(v)]
        if isinstance(v, dict):
            result = {k: self.value(x, (*path, k), (*out, k), ctx) for k, x in v.items()}
            renames = self.renames.get((*path, "graph"))
            if renames and isinstance(result.get("outputs"), list):
                result["outputs"] = [_rename(r, renames) for r in result["outputs"]]
            return result
        return v

    def marker(self, v: dict[str, Any], path: Path_, ctx: _Ctx) -> Any:
        name = ".".join(map(str, path)) + ctx.suffix
        if self.point is None:
            self.dims.append(make_dim(v, name, path, self.pos, ctx.parent, ctx.when))
            return None
        return self.point[name]

    def _place(self, path: Path_, out: Path_) -> None:
        if self.collecting:
            return
        self.out_pos.values[out] = self.pos.value(path)
        if path in self.pos.keys:
            self.out_pos.keys[out] = self.pos.keys[path]

    def _is_graph(self, path: Path_) -> bool:
        return not self.pipeline and (
            path == ("graph",) or (len(path) == 3 and path[0] == "blocks" and path[2] == "graph")
        )

    def _check_allowed(self, path: Path_) -> None:
        top = _FIXED_PIPELINE if self.pipeline else _FIXED_MODEL
        fixed = (
            (len(path) >= 1 and path[0] in top)
            or (self.pipeline and path[:2] == ("model", "spec"))
            or (len(path) >= 3 and path[0] == "blocks" and path[2] in _FIXED_BLOCK)
            or (_in_graph_item(path) and path[_item_depth(path)] in _FIXED_ITEM)
        )
        if fixed:
            where = ".".join(map(str, path))
            raise NlcError(
                f"a choice cannot stand at {where}: names, references, inputs and the search "
                "section are fixed",
                self.pos.value(path),
                "search params, op attributes, ops, repeat counts, train settings and pass "
                "options; for a searched input size use a param: shape: [B, 3, ${res}, ${res}]",
            )

    # -- graphs -----------------------------------------------------------------------------

    def graph(self, items: list[Any], path: Path_, out: Path_, ctx: _Ctx) -> list[Any]:
        result: list[Any] = []
        renames: dict[str, str] = {}
        for idx, item in enumerate(items):
            ipath = (*path, idx)
            if kind_of(item):  # a bare op choice, as `- relu` is a bare op
                item = {"op": item}
            if not isinstance(item, dict):
                self._place(ipath, (*out, len(result)))
                result.append(item)
                continue
            item = _renamed(item, renames)
            flags = {f: item.get(f, False) for f in ITEM_FLAGS}
            for flag, on in flags.items():
                if not isinstance(on, bool):
                    raise NlcError(
                        f"{flag} must be true or false, got {on!r}",
                        self.pos.value((*ipath, flag)),
                        f"e.g. {flag}: true",
                    )
            if not flags["independent"]:
                self._place(ipath, (*out, len(result)))
                result.append(self.item(item, ipath, (*out, len(result)), ctx))
                continue
            copies = self.independent(item, ipath, ctx)
            for i, copy_ctx in enumerate(copies):
                here = (*out, len(result))
                self._place(ipath, here)
                copy = {k: v for k, v in item.items() if k not in ("repeat", "independent")}
                copy["name"] = f"{_base_name(item)}_{i}"
                result.append(self.item(copy, ipath, here, copy_ctx))
            if "name" in item and copies:
                renames[item["name"]] = f"{item['name']}_{len(copies) - 1}"
        self.renames[path] = renames
        return result

    def independent(self, item: dict[str, Any], ipath: Path_, ctx: _Ctx) -> list[_Ctx]:
        """The contexts of the copies of an independent item (all possible ones when collecting,
        the ones that exist at the point otherwise)."""
        repeat = item.get("repeat")
        rpath = (*ipath, "repeat")
        if repeat is None:
            raise NlcError(
                "independent needs a repeated item",
                self.pos.key((*ipath, "independent")),
                "add `repeat:` (a number or a choice such as {int: [1, 4]}), or drop independent",
            )
        if kind_of(repeat):
            self.marker(repeat, rpath, ctx)
            name = ".".join(map(str, rpath)) + ctx.suffix
            if self.collecting:
                counts = self.dims[-1].values() or []
                if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
                    raise NlcError(
                        f"repeat counts must be integers from 1, got {counts!r}",
                        self.pos.value(rpath),
                        "e.g. repeat: {int: [1, 4]}",
                    )
                n = max(counts)
            else:
                n = self.point[name]  # type: ignore[index]
                counts = []
        elif isinstance(repeat, int) and not isinstance(repeat, bool) and repeat >= 1:
            name, counts, n = None, [], repeat
        else:
            raise NlcError(
                f"independent needs repeat to be a number or a choice, got {repeat!r}",
                self.pos.value(rpath),
                "e.g. repeat: {int: [1, 4]}; a param such as ${depth} cannot be expanded",
            )
        ctxs = []
        for i in range(n):
            when = tuple(c for c in counts if c > i)
            exists_always = name is None or not self.collecting or len(when) == len(counts)
            base = ctx if exists_always else _Ctx(name, when)
            ctxs.append(_Ctx(base.parent, base.when, f"{ctx.suffix}#{i}"))
        return ctxs

    def item(self, item: dict[str, Any], ipath: Path_, out: Path_, ctx: _Ctx) -> dict[str, Any]:
        """One graph item (an optional one, an op choice...) for `ctx`."""
        if item.get("optional", False):
            inputs = item.get("in")
            if isinstance(inputs, list) and len(inputs) > 1:
                raise NlcError(
                    f"an optional item reads one input, this one reads {len(inputs)}",
                    self.pos.key((*ipath, "optional")),
                    "when left out, an optional item passes its input on unchanged; "
                    "make the item optional inside a block with one input instead",
                )
            opath = (*ipath, "optional")
            on = self.marker({"choice": [False, True]}, opath, ctx)
            if on is False:
                return self._identity(item, ipath, out)
            ctx = _Ctx(".".join(map(str, opath)) + ctx.suffix, (True,), ctx.suffix)
        op = item.get("op")
        attr_ctx = ctx
        if kind_of(op):
            ppath = (*ipath, "op")
            self._place(ppath, (*out, "op"))
            if self.collecting:
                self._check_ops(op, ppath)
            op = self.marker(op, ppath, ctx)
            if op == "identity" and not self.collecting:
                return self._identity(item, ipath, out)
            if self.collecting:
                ops = self.dims[-1].choices
                if "identity" in ops:
                    name = ".".join(map(str, ppath)) + ctx.suffix
                    attr_ctx = _Ctx(name, tuple(o for o in ops if o != "identity"), ctx.suffix)
        result: dict[str, Any] = {}
        for key, v in item.items():
            if key in ITEM_FLAGS:
                continue
            kpath, kout = (*ipath, key), (*out, key)
            result[key] = op if key == "op" else self.value(v, kpath, kout, attr_ctx)
        return result

    def _identity(self, item: dict[str, Any], ipath: Path_, out: Path_) -> dict[str, Any]:
        """An item left out: identity, under the item's name and reading its input."""
        result: dict[str, Any] = {"op": "identity"}
        for key in ("name", "in"):
            if key in item:
                self._place((*ipath, key), (*out, key))
                result[key] = item[key]
        return result

    def _check_ops(self, op: dict[str, Any], path: Path_) -> None:
        for i, name in enumerate(op.get("choice") or []):
            if not isinstance(name, str):
                raise NlcError(
                    f"an op choice lists op or block names, got {name!r}",
                    self.pos.value((*path, "choice", i)),
                    "e.g. op: {choice: [conv3x3, sepconv3x3, identity]}",
                )
            if name not in REGISTRY and name not in self.blocks and not self.open_names:
                raise NlcError(
                    f"unknown op {name!r} in an op choice",
                    self.pos.value((*path, "choice", i)),
                    did_you_mean(name, [*REGISTRY, *self.blocks])
                    or "run `nlc ops` to list the ops, or define a block of that name",
                )
        if kind_of(op) != "choice":
            raise NlcError(
                "an op is chosen from a list: op: {choice: [...]}",
                self.pos.value(path),
                "e.g. op: {choice: [conv3x3, sepconv3x3, identity]}",
            )


def _in_graph_item(path: Path_) -> bool:
    return _item_depth(path) < len(path)


def _item_depth(path: Path_) -> int:
    """The index in `path` of the key inside a graph item (len(path) if not in one)."""
    if len(path) >= 3 and path[0] == "graph" and isinstance(path[1], int):
        return 2
    if len(path) >= 5 and path[0] == "blocks" and path[2] == "graph" and isinstance(path[3], int):
        return 4
    return len(path)


def _base_name(item: dict[str, Any]) -> str:
    name, op = item.get("name"), item.get("op")
    return name if isinstance(name, str) else op if isinstance(op, str) else "choice"


def _rename(ref: Any, renames: dict[str, str]) -> Any:
    if not isinstance(ref, str):
        return ref
    head, sep, tail = ref.partition("[")
    return renames[head] + sep + tail if head in renames else ref


def _renamed(item: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """The item with its references to expanded items pointing at their last copies."""
    if not renames or "in" not in item:
        return item
    refs = item["in"]
    new = [_rename(r, renames) for r in refs] if isinstance(refs, list) else _rename(refs, renames)
    return {**item, "in": new}
