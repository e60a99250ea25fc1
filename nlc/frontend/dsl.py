"""The `.nlc` frontend: DSL text to the plain document and `Positions` the YAML loader gives.

The grammar is spec/nlc.lark. A node's name and inputs become its `name` and `in` keys and an
expression over params becomes a `${...}` string of its text as written, so validation, includes,
lowering and the positions in their messages are shared with YAML specs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from nlc.errors import NlcError, SourceLoc, did_you_mean, mention
from nlc.frontend.ast import ModelSpec
from nlc.frontend.dsl_errors import explain
from nlc.frontend.layout import Layout, layout
from nlc.frontend.spec_item import SpecItem
from nlc.frontend.train_ast import PipelineSpec
from nlc.frontend.yaml_source import Path_, Positions, read_source
from nlc.resources import data_dir

TYPES = ("int", "float", "bool", "str")
# Model keys with statements of their own; any other is a setting, `key: value`.
_STRUCTURE = ("nlc", "name", "include", "params", "inputs", "blocks", "graph", "outputs")
SETTINGS = tuple(f.alias or n for n, f in ModelSpec.model_fields.items() if n not in _STRUCTURE)
PIPELINE_SETTINGS = ("model", "train")
# A `#` inside a string starts no comment; strings never span lines.
STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\r\n]*')
_RESERVED_ARGS = {
    "op": "the op is the name called, e.g. `linear(out=10)`",
    "name": "name a node with `=` or `as`: `head = linear(out=10)` or `linear(out=10) as head`",
    "in": "an op's inputs come before `->`: `x -> relu()`, `(a, b) -> add()`",
}


def _bare_name(value: Any) -> Any:
    """`relu` for the reference `${relu}` to a bare name, else `value`."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        inner = value[2:-1]
        return inner if inner.isidentifier() else value
    return value


def settings_of(spec: ModelSpec) -> dict[str, Any]:
    """The settings a spec gives, or that differ from their defaults, for printers; a section
    (`train:`) as the plain mapping of the keys it was given."""
    fields = ModelSpec.model_fields
    given = spec.model_fields_set
    return {
        k: _plain(getattr(spec, k))
        for k in SETTINGS
        if k in given or getattr(spec, k) != fields[k].get_default(call_default_factory=True)
    }


def _plain(value: Any) -> Any:
    if isinstance(value, SpecItem):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def pipeline_settings(spec: PipelineSpec) -> dict[str, Any]:
    """A pipeline's `model:` (a bare path where it has no params) and `train:`, for printers."""
    model = _plain(spec.model)
    return {
        "model": model["spec"] if list(model) == ["spec"] else model,
        "train": _plain(spec.train),
    }


def sections(spec: ModelSpec) -> set[str]:
    """The settings printed one key per line (a `train:` section), not as one flow value."""
    return {k for k in SETTINGS if isinstance(getattr(spec, k), SpecItem)}


@dataclass
class Parsed:
    doc: dict[str, Any]
    pos: Positions
    layout: Layout  # comments, blank lines, closing lines and chains, for `nlc fmt`


def load_dsl(path: Path, display: str) -> tuple[Any, Positions]:
    """Parse the `.nlc` file `path`; `display` is the file name used in messages."""
    parsed = parse_dsl(read_source(path, display), display)
    return parsed.doc, parsed.pos


def parse_dsl(text: str, display: str) -> Parsed:
    """Parse DSL text; `display` is the file name used in messages."""
    parser, lines = _grammar()
    try:
        tree = parser.parse(text, start="start")
    except UnexpectedInput as e:
        raise explain(e, text, display, lines.recent, parser) from None
    comments = (m.start() for m in STRING_OR_COMMENT.finditer(text) if m.group()[0] == "#")
    notes = layout(text, comments)
    notes.chained = set()
    builder = _Builder(text, display, notes)
    return Parsed(builder.file(tree.children[0]), builder.pos, notes)


def reads_as(text: str, value: str, params: Collection[str] = (), dims: bool = False) -> bool:
    """Whether the DSL reads `text`, written as a value (in a shape if `dims`, where `params`
    are the model's), as the string `value`: how printers tell when `${...}` needs no quotes."""
    parser, _ = _grammar()
    try:
        tree = parser.parse(text, start="value")
    except UnexpectedInput:
        return False
    builder = _Builder(text, "", Layout([], set()))
    builder.model_params = set(params)
    try:
        return builder.value(tree, (), dims) == value
    except NlcError:
        return False


class _Lines:
    """Post-lexer: a line break ends a statement, except inside brackets that hold values
    (`( )`, `[ ]` and mappings' `{ }`, not bodies' `{ }`), after `->` or `{`, and after another
    line break (so blank lines and comment lines count as one)."""

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.recent: list[Token] = []  # the last two tokens passed on, for error messages

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        values: list[bool] = []  # the open brackets: True where they hold values
        self.recent = []
        for tok in stream:
            last = self.recent[-1] if self.recent else None
            if tok.type == "_NL" and (
                values and values[-1] or last is None or last.type == "_NL" or last in ("->", "{")
            ):
                continue
            if tok in ("(", "[", "{"):
                # A body's `{` follows its header's name or `)`; a mapping's follows `:`, `=`...
                values.append(tok != "{" or last is None or last.type not in ("NAME", "RPAR"))
            elif tok in (")", "]", "}") and values:
                values.pop()
            self.recent = [*self.recent[-1:], tok]
            yield tok


@cache
def _grammar() -> tuple[Lark, _Lines]:
    lines = _Lines()
    grammar = (data_dir("spec") / "nlc.lark").read_text(encoding="utf-8")
    lark = Lark(
        grammar,
        parser="lalr",
        start=["start", "value"],
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=lines,
    )
    return lark, lines


def _present(children: list[Any]) -> list[Any]:
    """The children lark produced, without the placeholders of absent optional parts."""
    return [c for c in children if c is not None]


class _Builder:
    """Walks the parse tree; builds the document and records the position of each item."""

    def __init__(self, text: str, display: str, notes: Layout):
        self.text = text
        self.display = display
        self.pos = Positions(display)
        self.notes = notes
        self.model_params: set[str] = set()  # names in input shapes that are params, not dims

    def loc(self, node: Token | Tree) -> SourceLoc:
        if isinstance(node, Token):
            return SourceLoc(self.display, node.line, node.column)
        return SourceLoc(self.display, node.meta.line, node.meta.column)

    def file(self, tree: Tree) -> dict[str, Any]:
        if tree.data == "library":
            statements = _present(tree.children)
            if not statements:
                raise NlcError(
                    "the spec file is empty",
                    SourceLoc(self.display, 1, 1),
                    "a .nlc spec is `model NAME(params) { ... }`; a file that other specs "
                    "include holds `block`s",
                )
            self.pos.values[()] = self.pos.values[("nlc",)] = self.loc(statements[0])
            body = self.statements(tree, (), "library")
            return {"nlc": 1, **body}
        if tree.data == "pipeline":
            return self.pipeline(tree)
        name, signature, body = tree.children
        self.pos.values[()] = self.pos.values[("nlc",)] = self.loc(tree)
        self.pos.values[("name",)] = self.loc(name)
        params = self.params(signature, (), typed=False)
        if signature is not None:
            self.pos.values[("params",)] = self.loc(signature)
        self.model_params = set(params)
        self.notes.ends[()] = body.meta.end_line
        parts = self.statements(body, (), "model")
        doc: dict[str, Any] = {"nlc": 1, "name": str(name)}
        if "include" in parts:
            doc["include"] = parts.pop("include")
        if signature is not None:  # `model m() {` says `params: {}`
            doc["params"] = params
        return {**doc, **parts}

    def pipeline(self, tree: Tree) -> dict[str, Any]:
        """`pipeline NAME { model: ..., train: {...} }`: the document of a YAML pipeline file."""
        name, body = tree.children
        self.pos.values[()] = self.pos.values[("nlc",)] = self.loc(tree)
        settings: dict[str, Any] = {"nlc": 1}
        if name is not None:
            self.pos.values[("name",)] = self.loc(name)
            settings["name"] = str(name)
        for statement in _present(body.children):
            if statement.data != "setting":
                raise NlcError(
                    f"a pipeline holds settings only, not {statement.data} statements",
                    self.loc(statement),
                    'e.g. `model: "net.nlc"` and `train: {epochs: 10}`; the model goes in its '
                    "own spec file",
                )
            self._setting(statement, settings, "pipeline")
        return settings

    # -- statements -----------------------------------------------------------------------------

    def statements(self, tree: Tree, where: Path_, kind: str) -> dict[str, Any]:
        """The keys of a model, block or library body, in the order of the spec format."""
        statements = _present(tree.children)
        body: dict[str, Any] = {"include": [], "inputs": {} if kind == "model" else None}
        body |= {"blocks": {}, "graph": [], "outputs": None}
        settings: dict[str, Any] = {}
        for statement in statements:
            if statement.data == "setting":
                self._setting(statement, settings, kind)
            else:
                getattr(self, f"_{statement.data}")(statement, body, where, kind)
        keep = {
            "include": bool(body["include"]),
            "inputs": body["inputs"] is not None,  # a block's default to [x]
            "blocks": bool(body["blocks"]),
            "graph": kind != "library",
            "outputs": body["outputs"] is not None,
        }
        if not body["graph"] and keep["graph"]:  # where "the graph is empty" points
            self.pos.values[(*where, "graph")] = self.loc(tree)
        body = {k: v for k, v in body.items() if keep[k]}
        return body | {k: settings[k] for k in SETTINGS if k in settings}

    def _setting(self, statement: Tree, settings: dict[str, Any], kind: str) -> None:
        key, value = statement.children
        known = PIPELINE_SETTINGS if kind == "pipeline" else SETTINGS
        if kind not in ("model", "pipeline") or key not in known:
            call = isinstance(value, Tree) and value.data == "function"
            raise NlcError(
                f"unknown setting {str(key)!r}" + (" in a block" if kind == "block" else ""),
                self.loc(key),
                f"a node is named with `=`: `{key} = {self.expression(value)}`"
                if call and kind != "pipeline"
                else did_you_mean(key, known)
                or f"a {kind}'s settings are {', '.join(known)}, each `name: value`",
            )
        self._unique((str(key),), key, "setting")
        settings[str(key)] = self.value(value, (str(key),))

    def _include(self, statement: Tree, body: dict, where: Path_, kind: str) -> None:
        if kind == "block":
            raise NlcError(
                "`include` goes at the top of the model, not inside a block",
                self.loc(statement),
                "move it out of the block",
            )
        (path,) = statement.children
        includes = body["include"]
        if not includes:
            self.pos.values[("include",)] = self.loc(statement)
        self.pos.values[("include", len(includes))] = self.loc(path)
        includes.append(self.string(path))

    def _input(self, statement: Tree, body: dict, where: Path_, kind: str) -> None:
        ports = _present(statement.children)
        if kind == "model":
            if not ports:
                raise NlcError(
                    "`input` declares nothing",
                    self.loc(statement),
                    "name the input and give its type, e.g. `input x: f32[B, 3, 32, 32]`",
                )
            self.pos.values.setdefault(("inputs",), self.loc(statement))
            for port in ports:
                self._model_input(port, body)
            return
        names = body["inputs"]
        if names is None:
            self.pos.values[(*where, "inputs")] = self.loc(statement)
            names = body["inputs"] = []
        for port in ports:
            name, tensor = port.children
            if tensor is not None:
                raise NlcError(
                    f"block input {str(name)!r} has a type; a block input is just a name",
                    self.loc(tensor),
                    f"its shape comes from what the block is called with: write `input {name}`",
                )
            if name in names:
                raise NlcError(
                    f"block input {str(name)!r} is declared twice",
                    self.loc(name),
                    "give each input its own name",
                )
            self.pos.values[(*where, "inputs", len(names))] = self.loc(name)
            names.append(str(name))

    def _model_input(self, port: Tree, body: dict) -> None:
        name, tensor = port.children
        path = ("inputs", str(name))
        if tensor is None:
            raise NlcError(
                f"model input {str(name)!r} needs a type",
                self.loc(name),
                f"e.g. `input {name}: f32[B, 3, 32, 32]` (the dtype is optional, f32 by default)",
            )
        self._unique(path, name, "input")
        dtype, *dims = tensor.children
        self.pos.values[path] = self.loc(tensor)
        self.pos.values[(*path, "shape")] = self.loc(tensor) if dtype is None else self.loc(dtype)
        shape = [
            self.value(d, (*path, "shape", i), dims=True) for i, d in enumerate(_present(dims))
        ]
        entry: dict[str, Any] = {"shape": shape}
        if dtype is not None:
            self.pos.values[(*path, "dtype")] = self.loc(dtype)
            entry["dtype"] = str(dtype)
        body["inputs"][str(name)] = entry

    def _output(self, statement: Tree, body: dict, where: Path_, kind: str) -> None:
        path = (*where, "outputs")
        if body["outputs"] is not None:
            first = self.pos.values[path]
            here = self.loc(statement)
            raise NlcError(
                "a second `output` statement" + mention("the first is at", first, here),
                here,
                "list every output in one statement: `output a, b`",
            )
        self.pos.values[path] = self.loc(statement)
        refs = _present(statement.children)
        for i, ref in enumerate(refs):
            self.pos.values[(*path, i)] = self.loc(ref)
        body["outputs"] = [self.ref(ref) for ref in refs]

    def _block(self, statement: Tree, body: dict, where: Path_, kind: str) -> None:
        name, signature, inner = statement.children
        if kind == "block":
            raise NlcError(
                f"block {str(name)!r} is defined inside block {where[-1]!r}",
                self.loc(statement),
                "blocks do not nest: define it beside the other, then call it inside",
            )
        path = ("blocks", str(name))
        self._unique(path, name, "block")
        self.pos.values[path] = self.loc(statement)
        self.notes.ends[path] = inner.meta.end_line
        params = self.params(signature, path, typed=True)
        parts = self.statements(inner, path, "block")
        body["blocks"][str(name)] = {"params": params, **parts} if params else parts

    def _node(self, statement: Tree, body: dict, where: Path_, kind: str) -> None:
        name, source, *calls = statement.children
        graph = body["graph"]
        for k, call in enumerate(calls):
            path = (*where, "graph", len(graph))
            op, *args, alias = call.children
            item: dict[str, Any] = {"op": str(op)}
            named = alias if k < len(calls) - 1 or name is None else name
            if alias is not None and named is not alias:
                raise NlcError(
                    f"node {str(alias)!r} is also named {str(name)!r}",
                    self.loc(alias),
                    f"keep one name: `{name} = ...` or `... as {alias}`",
                )
            if named is not None:
                self.pos.values[(*path, "name")] = self.loc(named)
                item["name"] = str(named)
            if k == 0 and source is not None:
                item["in"] = self.source(source, (*path, "in"))
            for arg in _present(args):
                key, value = arg.children
                self._attr(item, path, key, value)
            self.pos.values[path] = self.loc(op)
            if len(item) > 1:
                self.pos.values[(*path, "op")] = self.loc(op)
            if item["op"] == "choice" and "ops" in item:
                self._op_choice(item, path)
            self.notes.ends[path] = call.meta.end_line
            if k:
                self.notes.chained.add(path)
            graph.append(item if len(item) > 1 else item["op"])

    def _op_choice(self, item: dict[str, Any], path: Path_) -> None:
        """`choice(ops=[relu, gelu], ...)`, a search space's op choice: `op: {choice: [...]}`."""
        ops = item.pop("ops")
        if isinstance(ops, list):  # bare names read as param references: `${relu}` -> relu
            ops = [_bare_name(o) for o in ops]
        item["op"] = {"choice": ops}
        self.pos.keys[(*path, "op")] = self.pos.keys.pop((*path, "ops"))
        for sub in [k for k in self.pos.values if k[: len(path) + 1] == (*path, "ops")]:
            rest = sub[len(path) + 1 :]
            self.pos.values[(*path, "op", "choice", *rest)] = self.pos.values.pop(sub)
        self.pos.values[(*path, "op")] = self.pos.values[(*path, "op", "choice")]

    def _attr(self, item: dict[str, Any], path: Path_, key: Token, value: Any) -> None:
        if key in _RESERVED_ARGS:
            raise NlcError(
                f"`{key}` is not an attribute in a .nlc file", self.loc(key), _RESERVED_ARGS[key]
            )
        if key in item:
            here = self.loc(key)
            raise NlcError(
                f"attribute {str(key)!r} is given twice"
                + mention("first at", self.pos.keys[(*path, str(key))], here),
                here,
                "keep one of them",
            )
        self.pos.keys[(*path, str(key))] = self.loc(key)
        item[str(key)] = self.value(value, (*path, str(key)))

    def source(self, source: Tree, path: Path_) -> str | list[str]:
        self.pos.values[path] = self.loc(source)
        refs = _present(source.children)
        if len(refs) == 1:
            return self.ref(refs[0])
        for i, ref in enumerate(refs):
            self.pos.values[(*path, i)] = self.loc(ref)
        return [self.ref(ref) for ref in refs]

    @staticmethod
    def ref(ref: Tree) -> str:
        name, index = ref.children
        return str(name) if index is None else f"{name}[{index}]"

    # -- params ---------------------------------------------------------------------------------

    def params(self, signature: Tree | None, where: Path_, typed: bool) -> dict[str, Any]:
        """A model's params (values) or a block's (`{type, default}` declarations)."""
        out: dict[str, Any] = {}
        for param in _present(signature.children) if signature is not None else []:
            name, kind, value = param.children
            path = (*where, "params", str(name))
            self._unique(path, name, "param")
            out[str(name)] = (
                self._declaration(path, name, kind, value)
                if typed
                else self._model_param(path, name, kind, value)
            )
        return out

    def _model_param(self, path: Path_, name: Token, kind: Token | None, value: Any) -> Any:
        if kind is not None:
            raise NlcError(
                f"model param {str(name)!r} has a type; a model param's type is its value's",
                self.loc(kind),
                f"write `{name}=...` (`--set {name}=...` changes it at build time)",
            )
        if value is None:
            raise NlcError(
                f"model param {str(name)!r} needs a value",
                self.loc(name),
                f"e.g. `{name}=64` (`--set {name}=...` changes it at build time)",
            )
        return self.value(value, path)

    def _declaration(self, path: Path_, name: Token, kind: Token | None, value: Any):
        declared: dict[str, Any] = {}
        self.pos.values[path] = self.loc(kind or value or name)
        if kind is not None:
            if kind not in TYPES:
                raise NlcError(
                    f"unknown type {str(kind)!r} for param {str(name)!r}",
                    self.loc(kind),
                    did_you_mean(kind, TYPES) or "the types are int, float, bool and str",
                )
            self.pos.values[(*path, "type")] = self.loc(kind)
            declared["type"] = str(kind)
        if value is not None:
            if kind is None and isinstance(value, Token) and value in TYPES:
                raise NlcError(
                    f"`{name}={value}` gives {str(name)!r} a default value, not a type",
                    self.loc(value),
                    f"declare the type with `:`: `{name}: {value}`",
                )
            declared["default"] = self.value(value, (*path, "default"))
        return declared

    def _unique(self, path: Path_, name: Token, what: str) -> None:
        here = self.loc(name)
        if path in self.pos.keys:
            raise NlcError(
                f"{what} {str(name)!r} is declared twice"
                + mention("first at", self.pos.keys[path], here),
                here,
                f"give each {what} its own name",
            )
        self.pos.keys[path] = here

    # -- values ---------------------------------------------------------------------------------

    def value(self, node: Any, path: Path_, dims: bool = False) -> Any:
        """A literal as itself, anything else as a `${...}` expression. In shapes (`dims`), a
        name that is not a model param is a symbolic dimension."""
        self.pos.values[path] = self.loc(node)
        if isinstance(node, Token):
            if node.type == "INT":
                return int(node)
            if node.type == "FLOAT":
                return float(node)
            if node.type == "STRING":
                return self.string(node)
            if dims and node not in self.model_params:
                return str(node)
            return f"${{{node}}}"
        if node.data in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[node.data]
        if node.data == "neg" and isinstance(node.children[0], Token):
            number = node.children[0]
            if number.type in ("INT", "FLOAT"):
                return -(int(number) if number.type == "INT" else float(number))
        if node.data == "list":
            return [self.value(v, (*path, i)) for i, v in enumerate(_present(node.children))]
        if node.data == "mapping":
            return self.mapping(node, path)
        return "${" + self.expression(node) + "}"

    def mapping(self, node: Tree, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pair in _present(node.children):
            key, value = pair.children
            name = self.string(key) if key.type == "STRING" else str(key)
            if name in out:
                raise NlcError(f"key {name!r} is given twice", self.loc(key), "keep one of them")
            self.pos.keys[(*path, name)] = self.loc(key)
            out[name] = self.value(value, (*path, name))
        return out

    def expression(self, node: Tree) -> str:
        """The text of an expression as written, without comments, on one line."""
        text = self.text[node.meta.start_pos : node.meta.end_pos]
        text = STRING_OR_COMMENT.sub(lambda m: m.group() if m.group()[0] == '"' else "", text)
        return re.sub(r"\s*[\r\n]\s*", " ", text)

    def string(self, token: Token) -> str:
        try:
            return json.loads(token, strict=False)
        except json.JSONDecodeError as e:
            raise NlcError(
                f"bad escape in string {token}: {e.msg.lower()}",
                self.loc(token),
                'escapes are \\" \\\\ \\n \\t and \\uXXXX, as in JSON',
            ) from None
