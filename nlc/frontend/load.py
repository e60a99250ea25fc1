"""Load a spec file: YAML to validated AST, includes merged, locations attached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from nlc.errors import NlcError, SourceLoc, did_you_mean
from nlc.frontend.ast import BlockSpec, IncludeSpec, ModelSpec, NodeSpec
from nlc.frontend.yaml_source import Positions, load_yaml


@dataclass
class Spec:
    """A loaded spec: the AST with includes merged, `--set` overrides applied, and its source."""

    ast: ModelSpec
    path: Path
    data: dict[str, Any]  # the resolved document, written to the build as spec.yaml


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    path = Path(path)
    data, pos = load_yaml(path, str(path))
    spec = _validate(ModelSpec, data, pos)
    _attach(spec, pos)
    blocks = dict(spec.blocks)
    _merge_includes(spec.include, path, pos, ("include",), [path.resolve()], blocks)
    spec.blocks = blocks
    if overrides:
        spec.params = _apply_overrides(spec.params, overrides)
    resolved = dict(data)
    resolved.pop("include", None)
    resolved["params"] = dict(spec.params)
    resolved["blocks"] = {
        n: b.model_dump(by_alias=True, exclude_defaults=True) for n, b in blocks.items()
    }
    for block in resolved["blocks"].values():
        block["graph"] = _dump_nodes(block["graph"])
    if not resolved["blocks"]:
        resolved.pop("blocks")
    return Spec(spec, path, resolved)


def _dump_nodes(nodes: list[dict[str, Any]]) -> list[Any]:
    return [n["op"] if list(n) == ["op"] else n for n in nodes]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["width=64", "act=gelu"]` to typed values (YAML scalars).

    >>> parse_overrides(["width=64", "p=0.1", "bias=false"])
    {'width': 64, 'p': 0.1, 'bias': False}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise NlcError(
                f"--set {item!r} is not of the form key=value", None, "e.g. --set width=64"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if not isinstance(value, (int, float, bool, str)):
            raise NlcError(f"--set {item!r}: the value must be a number, true/false or text", None)
        out[key.strip()] = value
    return out


def _apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    for key, value in overrides.items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise NlcError(
                f"--set {key}: the spec has no param {key!r} (params: {known})",
                None,
                did_you_mean(key, params) or "add it under `params:` in the spec first",
            )
        params[key] = value
    return params


def _validate(model: type[BaseModel], data: Any, pos: Positions):
    if not isinstance(data, dict):
        raise NlcError(
            "a spec must be a mapping with keys such as nlc, name, inputs and graph",
            SourceLoc(pos.file, 1, 1),
            "start the file with `nlc: 1`",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _explain(e.errors()[0], model, data, pos) from None


def _explain(err: dict, model: type[BaseModel], data: Any, pos: Positions) -> NlcError:
    # Pydantic's path includes union-branch tags; keep only the steps present in the data.
    path: list[str | int] = []
    node = data
    for step in err["loc"]:
        if (
            isinstance(node, dict)
            and step in node
            or isinstance(node, list)
            and (isinstance(step, int) and step < len(node))
        ):
            path.append(step)
            node = node[step]
    where = ".".join(str(p) for p in path) or "the top level"
    kind = err["type"]
    last = err["loc"][-1] if err["loc"] else ""
    if kind == "extra_forbidden":
        fields = _fields_at(model, path[:-1])
        return NlcError(
            f"unknown key {last!r}",
            pos.key(tuple(path)),
            did_you_mean(str(last), fields) or f"allowed keys here: {', '.join(fields)}",
        )
    if kind == "missing":
        return NlcError(f"missing required key {last!r} in {where}", pos.value(tuple(path)))
    if kind == "literal_error" and path == ["nlc"]:
        return NlcError(
            f"unsupported spec version {data.get('nlc')!r}", pos.value(("nlc",)), "use `nlc: 1`"
        )
    return NlcError(f"{where}: {err['msg']} (got {node!r})", pos.value(tuple(path)))


def _fields_at(model: type[BaseModel], path: list[str | int]) -> list[str]:
    """Allowed keys of the model found by walking `path` (used for 'did you mean')."""
    by_section = {"inputs": ["shape", "dtype"], "blocks": list(BlockSpec.model_fields)}
    if len(path) >= 2 and path[0] in by_section and len(path) == 2:
        return by_section[path[0]]
    if len(path) == 4 and path[0] == "blocks" and path[2] == "params":
        return ["type", "default"]
    return list(model.model_fields)


def _attach(spec: ModelSpec | IncludeSpec, pos: Positions) -> None:
    """Give every AST item its source position."""
    spec._loc = pos.value(())
    if isinstance(spec, ModelSpec):
        for name, t in spec.inputs.items():
            t._loc = pos.value(("inputs", name))
        _attach_nodes(spec.graph, ("graph",), pos)
    for name, block in spec.blocks.items():
        block._loc = pos.key(("blocks", name))
        block._file = pos.file
        for pname, decl in block.params.items():
            decl._loc = pos.value(("blocks", name, "params", pname))
        _attach_nodes(block.graph, ("blocks", name, "graph"), pos)


def _attach_nodes(nodes: list[NodeSpec], path: tuple, pos: Positions) -> None:
    for i, node in enumerate(nodes):
        node._loc = pos.value((*path, i))
        node._attr_locs = {k: pos.value((*path, i, k)) for k in node.model_extra or {}}
        for key in ("op", "in", "repeat", "name"):
            node._attr_locs[key] = pos.value((*path, i, key))


def _merge_includes(
    includes: list[str],
    base: Path,
    pos: Positions,
    path: tuple,
    stack: list[Path],
    blocks: dict[str, BlockSpec],
) -> None:
    for i, rel in enumerate(includes):
        loc = pos.value((*path, i))
        target = (base.parent / rel).resolve()
        if target in stack:
            cycle = " -> ".join(p.name for p in [*stack[stack.index(target) :], target])
            raise NlcError(f"include cycle: {cycle}", loc, "remove one of these includes")
        if not target.is_file():
            raise NlcError(f"included file {rel!r} does not exist", loc, f"looked for {target}")
        display = str(base.parent / rel)
        data, inc_pos = load_yaml(target, display)
        inc = _validate(IncludeSpec, data, inc_pos)
        _attach(inc, inc_pos)
        for name, block in inc.blocks.items():
            if name in blocks:
                raise NlcError(
                    f"block {name!r} from {display} is already defined",
                    block.loc,
                    f"the other definition is at {blocks[name].loc}; rename one of them",
                )
            blocks[name] = block
        _merge_includes(inc.include, target, inc_pos, ("include",), [*stack, target], blocks)
