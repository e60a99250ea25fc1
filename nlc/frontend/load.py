"""Load a spec file (YAML, or the DSL if `.nlc`): validated AST, includes merged, locations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from nlc.errors import NlcError, SourceLoc, did_you_mean
from nlc.frontend.ast import BlockSpec, IncludeSpec, ModelSpec, fits
from nlc.frontend.dsl import load_dsl
from nlc.frontend.expr import is_expr
from nlc.frontend.names import check_identifier
from nlc.frontend.train_ast import PipelineSpec
from nlc.frontend.yaml_source import Positions, load_yaml
from nlc.search.markers import first_marker


@dataclass
class Spec:
    """A loaded spec: the AST with includes merged, `--set` overrides applied, and its source."""

    ast: ModelSpec
    path: Path
    data: dict[str, Any]  # the resolved document, written to the build as spec.yaml
    # The folder that the train section's data paths are relative to: the pipeline file's
    # folder for a pipeline, else the spec's (None).
    root: Path | None = None

    @property
    def data_root(self) -> Path:
        return self.root or self.path.parent


# Documents given in place of files (resolved path -> document and positions): the concrete
# documents of one point of a search space.
Documents = dict[Path, tuple[Any, Positions]]


def load_spec(
    path: str | Path, overrides: dict[str, Any] | None = None, documents: Documents | None = None
) -> Spec:
    """Load a model spec, or a pipeline file (a `model:` spec path and a `train:` section).

    `overrides` are `--set` values: `name` sets a model param, `train.a.b` a train setting.
    A file with choice markers is a search space, refused here (see `nlc.search.space`)
    unless `documents` gives its concrete documents.
    """
    path = Path(path)
    params = {k: v for k, v in (overrides or {}).items() if not k.startswith("train.")}
    train = {k[len("train.") :]: v for k, v in (overrides or {}).items() if k.startswith("train.")}
    data, pos = _document(path, str(path), documents, path)
    if isinstance(data, dict) and "model" in data:
        return _load_pipeline(path, _set_train(data, train), pos, params, documents)
    spec = validate(ModelSpec, _set_train(data, train), pos)
    return _resolve_model(spec, path, data, params)


def _resolve_model(spec: ModelSpec, path: Path, data: Any, overrides: dict[str, Any]) -> Spec:
    blocks = dict(spec.blocks)
    _merge_includes(spec, path, [(path.resolve(), str(path))], set(), blocks)
    spec.blocks = blocks
    if overrides:
        spec.params = _apply_overrides(spec, overrides)
    resolved = dict(data)
    if spec.train is not None:
        resolved["train"] = spec.train.model_dump(mode="json", exclude_unset=True)
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


def _set_train(data: Any, settings: dict[str, Any]) -> Any:
    """The document with `--set train.a.b=v` values written into its `train:` section."""
    if not settings or not isinstance(data, dict):
        return data
    data = dict(data)
    for dotted, value in settings.items():
        *outer, key = dotted.split(".")
        node = data
        for step in ["train", *outer]:
            inner = node.get(step)
            node[step] = dict(inner) if isinstance(inner, dict) else {}
            node = node[step]
        node[key] = value
    return data


def _load_pipeline(
    path: Path, data: dict, pos: Positions, params: dict[str, Any], documents: Documents | None
) -> Spec:
    """A pipeline file: its model spec loaded with the pipeline's params (then `--set`'s), and
    the pipeline's name and train section in place of the model's."""
    pipe = validate(PipelineSpec, data, pos)
    ref = pipe.model
    model_path = path.parent / ref.spec
    if not model_path.is_file():
        raise NlcError(
            f"model spec {ref.spec!r} {'is a folder' if model_path.is_dir() else 'does not exist'}",
            ref.at("spec"),
            f"the path is relative to the pipeline file: looked for {model_path}",
        )
    model_data, model_pos = _document(model_path, str(model_path), documents, path)
    if isinstance(model_data, dict) and "model" in model_data:
        raise NlcError(
            f"{ref.spec!r} is a pipeline file, not a model spec",
            ref.at("spec"),
            "name the model spec that pipeline trains",
        )
    spec = validate(ModelSpec, model_data, model_pos)
    for key, value in ref.params.items():
        _check_override(spec, key, value, f"model.params: {key}", ref.key_at("params", key))
    loaded = _resolve_model(spec, model_path, model_data, {**ref.params, **params})
    if pipe.name is not None:
        loaded.ast.name = check_identifier(pipe.name, "package name", pipe.at("name"))
        loaded.data["name"] = pipe.name
    loaded.ast.train = pipe.train
    loaded.data["train"] = pipe.train.model_dump(mode="json", exclude_unset=True)
    if pipe.passes:
        loaded.ast.passes = [*loaded.ast.passes, *pipe.passes]
        loaded.data["passes"] = [p.model_dump(by_alias=True) for p in loaded.ast.passes]
    loaded.root = path.parent
    return loaded


def load_document(path: Path, display: str) -> tuple[Any, Positions]:
    """The plain document of a spec file and its positions: `.nlc` files are in the DSL, any
    other is YAML."""
    return load_dsl(path, display) if path.suffix == ".nlc" else load_yaml(path, display)


def _document(
    path: Path, display: str, documents: Documents | None, top: Path
) -> tuple[Any, Positions]:
    """The document at `path` (the given one if `documents` has it); one with choice markers is
    refused: `top`, the file being loaded, is a search space."""
    if documents is not None and path.resolve() in documents:
        return documents[path.resolve()]
    data, pos = load_document(path, display)
    if (marker := first_marker(data)) is not None:
        raise _space_error(top, pos.value(marker) if path != top else None)
    return data, pos


def _space_error(top: Path, where: SourceLoc | None) -> NlcError:
    from nlc.search.space import load_space  # the space module builds on this one

    space = load_space(top)
    n = len(space.dims) if space else 0
    return NlcError(
        f"{top} is a search space with {n} dimension{'s' * (n != 1)} (choices such as this "
        "one); `nlc build` and `nlc train` take a concrete spec",
        where or (space.dims[0].loc if space and space.dims else None),
        f"run `nlc search {top}` to search it (`nlc check {top}` lists its dimensions), "
        "then build one of its results, e.g. front/0.yaml",
    )


def _dump_nodes(nodes: list[dict[str, Any]]) -> list[Any]:
    return [n["op"] if list(n) == ["op"] else n for n in nodes]


def parse_overrides(items: list[str], option: str = "--set") -> dict[str, Any]:
    """`["width=64", "act=gelu"]` to typed values (YAML scalars); `option` names them in errors.

    >>> parse_overrides(["width=64", "p=0.1", "bias=false"])
    {'width': 64, 'p': 0.1, 'bias': False}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise NlcError(
                f"{option} {item!r} is not of the form name=value", None, f"e.g. {option} width=64"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if not isinstance(value, (int, float, bool, str)):
            raise NlcError(
                f"{option} {item!r}: the value must be a number, true/false or text",
                None,
                f"e.g. {option} {key.strip()}=64",
            )
        out[key.strip()] = value
    return out


def _apply_overrides(spec: ModelSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec's params with `--set` values; errors point at the spec's `params:`."""
    for key, value in overrides.items():
        _check_override(spec, key, value, f"--set {key}={value}", None)
    return {**spec.params, **overrides}


def _check_override(
    spec: ModelSpec, key: str, value: Any, given: str, loc: SourceLoc | None
) -> None:
    """`value` (from `given`, at `loc` if it is in a file) must suit the param `key`."""
    if key not in spec.params:
        known = ", ".join(spec.params) or "none"
        raise NlcError(
            f"{given}: the model has no param {key!r} (its params: {known})",
            loc or spec.key_at("params"),
            did_you_mean(key, spec.params) or "declare it under `params:` in the spec first",
        )
    default = spec.params[key]
    if not is_expr(default) and not fits(value, type(default).__name__):
        raise NlcError(
            f"{given}: param {key!r} is {_KINDS[type(default)]} ({key}: {default}), got {value!r}",
            loc or spec.at("params", key),
            f"e.g. --set {key}={default}" if loc is None else f"e.g. {key}: {default}",
        )


_KINDS = {int: "an int", float: "a float", bool: "true or false", str: "text"}


def parse_passes(items: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """`--pass` values, `name:key=value,key=value`, to (name, options); values are YAML
    (`ranks=[8, 16]`), and commas inside brackets do not split.

    >>> parse_passes(["svd:rank=0.5,select=h.*.fc", "tucker:rank=[8, 16]", "cp"])
    [('svd', {'rank': 0.5, 'select': 'h.*.fc'}), ('tucker', {'rank': [8, 16]}), ('cp', {})]
    """
    steps = []
    for item in items:
        name, _, rest = item.partition(":")
        options: dict[str, Any] = {}
        for part in _split_top(rest):
            key, sep, text = part.partition("=")
            if not sep or not key.strip() or not name.strip():
                raise NlcError(
                    f"--pass {item!r} is not of the form name:key=value,...",
                    None,
                    "e.g. --pass svd:rank=0.5,select=h.*.fc (nlc passes lists the options)",
                )
            try:
                options[key.strip()] = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                options[key.strip()] = text
        steps.append((name.strip(), options))
    return steps


def _split_top(text: str) -> list[str]:
    """`text` split at the commas outside brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def validate(model: type[BaseModel], data: Any, pos: Positions):
    """Validate a loaded document against `model` and give its items their positions."""
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise NlcError(
            f"the spec file is {what}",
            pos.value(()),
            "a spec is a mapping with keys nlc, name, inputs and graph; start it with `nlc: 1`",
        )
    try:
        spec = model.model_validate(data)
    except ValidationError as e:
        # A misspelt key also makes the right one missing; the unknown key is the real cause.
        err = min(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        raise _explain(err, model, data, pos) from None
    spec.place(pos)
    return spec


def _explain(err: dict, model: type[BaseModel], data: Any, pos: Positions) -> NlcError:
    # Pydantic's path includes union-branch tags; keep only the steps present in the data.
    path: list[str | int] = []
    value = data
    for step in err["loc"]:
        if isinstance(value, dict) and step in value or _is_index(value, step):
            path.append(step)
            value = value[step]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    kind = err["type"]
    key = str(err["loc"][-1]) if err["loc"] else ""
    if kind == "extra_forbidden":
        return _unknown_key(key, model, path, pos)
    if kind == "missing":
        return NlcError(
            f"missing key {key!r}" + (f" in {where}" if where else ""),
            pos.value(tuple(path)),
            _MISSING_HINTS.get(key, f"add `{key}: ...`"),
        )
    if kind == "literal_error" and path == ["nlc"]:
        return NlcError(
            f"unsupported spec version {value!r}", pos.value(("nlc",)), "this nlc reads `nlc: 1`"
        )
    expected = _annotation_at(model, path)
    hint = did_you_mean(str(value), get_args(expected)) if kind == "literal_error" else None
    msg = "must be a mapping" if kind == "model_type" else plain_message(err["msg"])
    return NlcError(
        f"{where or 'the spec'} {msg}, got {value!r}",
        pos.value(tuple(path)),
        hint or (f"`{path[-1]}` takes {describe_type(expected)}" if expected and path else None),
    )


_MISSING_HINTS = {
    "nlc": "start the file with `nlc: 1` (the spec format version)",
    "name": "add `name: my_model` (it names the generated package)",
    "inputs": "add e.g. `inputs: {x: {shape: [B, 3, 32, 32]}}`",
    "graph": "add `graph:` with a list of ops, e.g. `graph: [{op: linear, out: 10}]`",
    "shape": "add e.g. `shape: [B, 3, 32, 32]` (ints, or names for symbolic dims)",
    "op": "each graph item names its op, e.g. `{op: linear, out: 64}` or just `relu`",
}


def _is_index(value: Any, step: Any) -> bool:
    return isinstance(value, list) and isinstance(step, int) and step < len(value)


def _unknown_key(key: str, model: type[BaseModel], path: list, pos: Positions) -> NlcError:
    owner = _annotation_at(model, path[:-1])
    fields = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
    hint = did_you_mean(key, fields) or f"allowed keys here: {', '.join(fields)}"
    if model is IncludeSpec and not path[:-1] and key in ModelSpec.model_fields:
        hint = f"an included file holds only `blocks:` (and `include:`); move {key!r} elsewhere"
    return NlcError(f"unknown key {key!r}", pos.key(tuple(path)), hint)


def _annotation_at(model: Any, path: list[str | int]) -> Any:
    """The type the spec format expects at `path` (a model, a Literal, ...), or None."""
    ann = model
    for step in path:
        ann = _drop_none(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            fields = {f.alias or n: f for n, f in ann.model_fields.items()}
            if step not in fields:
                return None
            ann = fields[step].annotation
        elif get_origin(ann) in (list, dict):
            ann = get_args(ann)[-1]
        else:
            return None
    return _drop_none(ann)


def _drop_none(ann: Any) -> Any:
    if get_origin(ann) in (Union, UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann


def plain_message(msg: str) -> str:
    """Pydantic's message as the tail of a sentence ('must be a valid integer').

    >>> plain_message("Input should be greater than 0")
    'must be greater than 0'
    """
    return msg.removeprefix("Value error, ").replace("Input should be", "must be")


def describe_type(ann: Any, constraints: Any = ()) -> str:
    """A field type in words, for hints: `int > 0`, `int or a list of int`, `'same' or 'valid'`.

    >>> describe_type(int | list[int])
    'int or a list of int'
    """
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        text = " or ".join(map(repr, args))
    elif origin in (Union, UnionType):
        text = " or ".join(describe_type(a) for a in args if a is not type(None))
    elif origin in (list, tuple):
        text = f"a list of {_plural(args[0])}"
    elif origin is dict:
        text = f"a mapping of names to {_plural(args[1])}"
    elif hasattr(ann, "noun"):
        article = "an" if ann.noun[0] in "aeiou" else "a"
        text = f"{article} {ann.noun}" + (f" ({ann.example})" if ann.example else "")
    else:
        text = getattr(ann, "__name__", str(ann))
    bounds = [
        f"{sign} {getattr(c, attr)}"
        for c in constraints
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(c, attr, None) is not None
    ]
    return " ".join([text, *bounds]) if bounds else text


def _plural(ann: Any) -> str:
    if hasattr(ann, "noun"):
        return f"{ann.noun}s" + (f" ({ann.example})" if ann.example else "")
    return describe_type(ann)


def _merge_includes(
    owner: ModelSpec | IncludeSpec,
    file: Path,
    chain: list[tuple[Path, str]],
    seen: set[Path],
    blocks: dict[str, BlockSpec],
) -> None:
    """Add the blocks of `owner`'s includes (recursively); a file reached twice is read once."""
    for i, rel in enumerate(owner.include):
        loc = owner.at("include", i)
        target = (file.parent / rel).resolve()
        display = os.path.normpath(file.parent / rel)
        files = [resolved for resolved, _ in chain]
        if target in files:
            cycle = " -> ".join([*(shown for _, shown in chain), display])
            raise NlcError(
                f"include cycle: {cycle}", loc, "remove one of these includes to break the cycle"
            )
        if target in seen:
            continue
        if not target.is_file():
            raise NlcError(
                f"included file {rel!r} {'is a folder' if target.is_dir() else 'does not exist'}",
                loc,
                f"include paths are relative to the including file: looked for {display}",
            )
        seen.add(target)
        data, pos = load_document(target, display)
        if (marker := first_marker(data)) is not None:
            raise NlcError(
                f"choice markers in an included file ({display}) are not supported",
                pos.value(marker),
                "move the searched block into the spec file itself",
            )
        inc = validate(IncludeSpec, data, pos)
        for name, block in inc.blocks.items():
            if name in blocks:
                raise NlcError(
                    f"block {name!r} (included from {loc}) is already defined at "
                    f"{blocks[name].loc}",
                    block.loc,
                    "rename one of the two blocks",
                )
            blocks[name] = block
        _merge_includes(inc, Path(display), [*chain, (target, display)], seen, blocks)
