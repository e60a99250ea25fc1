"""Print a spec AST as DSL text in the canonical layout (what `nlc fmt` gives a `.nlc` file and
`nlc convert` writes), with the comments and blank lines of the source it came from.

The layout: two-space indents; a model's includes, inputs, blocks, graph and output in that
order; a blank line around each block; one statement per line, a chain of unnamed ops joined by
`->` (or, for a `.nlc` source, the chains as written); a line longer than 100 characters broken
after `->`, and a call still too long with one attribute per line.
"""

from __future__ import annotations

import json
import re
from typing import Any

from nlc.errors import NlcError
from nlc.frontend.ast import BlockSpec, IncludeSpec, ModelSpec, NodeSpec, ParamDecl
from nlc.frontend.dsl import pipeline_settings, reads_as, sections, settings_of
from nlc.frontend.dsl_errors import STATEMENTS
from nlc.frontend.expr import is_expr
from nlc.frontend.layout import WIDTH, Placed, Unit, Writer, float_text
from nlc.frontend.train_ast import PipelineSpec
from nlc.frontend.yaml_source import Path_

INDENT = "  "
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[0-9]+\])?\Z")


def dsl_units(spec: ModelSpec | IncludeSpec | PipelineSpec) -> list[Unit]:
    """The items the DSL printer puts on lines of their own, in the order it prints them."""
    if isinstance(spec, PipelineSpec):
        settings = pipeline_settings(spec).items()
        return [Unit((), [Unit((k,), [Unit((k, s)) for s in _keys(v)]) for k, v in settings])]
    blocks = [_block_unit(name, block) for name, block in spec.blocks.items()]
    includes = [Unit(("include", i)) for i in range(len(spec.include))]
    if isinstance(spec, IncludeSpec):
        return includes + blocks
    children = [Unit(("params", p)) for p in spec.params] + includes
    children += [Unit(("inputs", x)) for x in spec.inputs] + blocks
    children += _body_units((), spec.graph, spec.outputs)
    settings = [
        Unit((key,), [Unit((key, k)) for k in value] if key in sections(spec) else [])
        for key, value in settings_of(spec).items()
    ]
    return [Unit((), children + settings)]


def _block_unit(name: str, block: BlockSpec) -> Unit:
    path = ("blocks", name)
    children = [Unit((*path, "params", p)) for p in block.params]
    if "inputs" in block.model_fields_set:
        children.append(Unit((*path, "inputs")))
    return Unit(path, children + _body_units(path, block.graph, block.outputs))


def _body_units(where: Path_, graph: list[NodeSpec], outputs: list[str] | None) -> list[Unit]:
    units = [Unit((*where, "graph", i)) for i in range(len(graph))]
    return units + ([Unit((*where, "outputs"))] if outputs is not None else [])


def _keys(value: Any) -> list[str]:
    return list(value) if isinstance(value, dict) else []


def format_dsl(spec: ModelSpec | IncludeSpec | PipelineSpec, placed: Placed | None = None) -> str:
    """The DSL text of `spec`; `placed` says where the source's comments and blank lines go
    (see `layout.place` over `dsl_units`)."""
    return _Printer(spec, placed or Placed()).run()


class _Printer(Writer):
    def __init__(self, spec: ModelSpec | IncludeSpec | PipelineSpec, placed: Placed):
        super().__init__(placed)
        self.spec = spec
        self.params = set(spec.params) if isinstance(spec, ModelSpec) else set()

    def run(self) -> str:
        if isinstance(self.spec, PipelineSpec):
            self.pipeline(self.spec)
        elif isinstance(self.spec, ModelSpec):
            self.model(self.spec)
        else:
            first = self.includes(self.spec.include, "", True)
            for name, block in self.spec.blocks.items():
                self.block(name, block, "", first)
                first = False
        return self.text()

    # -- headers and closing braces -------------------------------------------------------------

    def close(self, path: Path_, indent: str) -> None:
        """A body's closing brace, below the comments that end the body."""
        self.comments(self.placed.footer.get(path, []), indent + INDENT, first=False)
        self.lines.append(indent + "}")

    def header(
        self,
        keyword: str,
        name: str,
        params: list[tuple[Path_, str]],
        owner: Path_,
        parens: bool,
        indent: str,
    ) -> None:
        """`model NAME(params) {` on one line, or one param per line when it is too long or
        the params have comments."""
        commented = any(self.placed.above(p) or p in self.placed.trailing for p, _ in params)
        listed = "(" + ", ".join(text for _, text in params) + ")" if parens else ""
        flat = f"{indent}{keyword} {_name(name, keyword)}{listed} {{"
        if len(flat) <= WIDTH and not commented:
            self.put(owner, flat)
            return
        self.put(owner, f"{indent}{keyword} {_name(name, keyword)}(")
        for k, (path, text) in enumerate(params):
            self.above(path, indent + INDENT, first=k == 0)
            self.put(path, f"{indent}{INDENT}{text},")
        self.lines.append(indent + ") {")

    # -- model, blocks and statements -----------------------------------------------------------

    def model(self, spec: ModelSpec) -> None:
        self.above((), "", first=True)
        params = [
            (("params", k), f"{_name(k, 'param')}={self.value(v)}") for k, v in spec.params.items()
        ]
        parens = bool(params) or "params" in spec.model_fields_set
        self.header("model", spec.name, params, (), parens, "")
        first = self.includes(spec.include, INDENT, True)
        for name, t in spec.inputs.items():
            path = ("inputs", name)
            self.above(path, INDENT, first)
            dtype = t.dtype if "dtype" in t.model_fields_set else ""
            shape = ", ".join(self.value(d, dims=True) for d in t.shape)
            self.put(path, f"{INDENT}input {_name(name, 'input')}: {dtype}[{shape}]")
            first = False
        for name, block in spec.blocks.items():
            self.block(name, block, INDENT, first)
            first = False
        self.body((), spec.graph, spec.outputs, INDENT, first, space=bool(spec.blocks))
        blocky = sections(spec)
        for key, value in settings_of(spec).items():
            self.above((key,), INDENT, first=False)
            if key in blocky and value:
                self.section((key,), value)
            else:
                self.put((key,), f"{INDENT}{key}: {self.value(value)}")
        self.close((), "")

    def pipeline(self, spec: PipelineSpec) -> None:
        self.above((), "", first=True)
        name = f" {_name(spec.name, 'pipeline')}" if spec.name is not None else ""
        self.put((), f"pipeline{name} {{")
        for k, (key, value) in enumerate(pipeline_settings(spec).items()):
            self.above((key,), INDENT, first=k == 0)
            if isinstance(value, dict) and value:
                self.section((key,), value)
            else:
                self.put((key,), f"{INDENT}{key}: {self.value(value)}")
        self.close((), "")

    def section(self, path: Path_, value: dict[str, Any], indent: str = INDENT) -> None:
        """`key: {` and one `name: value,` line per entry of a section (`train:`), then `}`;
        an entry too long for a line is a section of its own."""
        self.put(path, f"{indent}{path[-1]}: {{")
        inner = indent + INDENT
        for k, (name, sub) in enumerate(value.items()):
            self.above((*path, name), inner, first=k == 0)
            line = f"{inner}{name}: {self.value(sub)},"
            if len(line) > WIDTH and isinstance(sub, dict) and sub:
                self.section((*path, name), sub, inner)
                self.lines[-1] += ","
            else:
                self.put((*path, name), line)
        self.close(path, indent)

    def includes(self, paths: list[str], indent: str, first: bool) -> bool:
        for i, path in enumerate(paths):
            self.above(("include", i), indent, first)
            self.put(("include", i), f"{indent}include {_string(path)}")
            first = False
        return first

    def block(self, name: str, block: BlockSpec, indent: str, first: bool) -> None:
        path = ("blocks", name)
        self.above(path, indent, first, space=True)
        params = [((*path, "params", k), self.declaration(k, d)) for k, d in block.params.items()]
        self.header("block", name, params, path, bool(params), indent)
        inner = indent + INDENT
        first = True
        if "inputs" in block.model_fields_set:
            self.above((*path, "inputs"), inner, first)
            names = ", ".join(_name(x, "block input") for x in block.inputs)
            self.put((*path, "inputs"), f"{inner}input {names}".rstrip())
            first = False
        self.body(path, block.graph, block.outputs, inner, first, space=False)
        self.close(path, indent)

    def body(
        self,
        where: Path_,
        graph: list[NodeSpec],
        outputs: list[str] | None,
        indent: str,
        first: bool,
        space: bool,
    ) -> None:
        """Graph statements and the `output` statement; `space`: a block precedes them."""
        start = 0
        for end in range(1, len(graph) + 1):
            if end < len(graph) and self.joins(where, graph, end):
                continue
            path = (*where, "graph", start)
            self.above(path, indent, first, space)
            first_line, *rest = self.statement(graph[start:end], indent)
            self.put(path, first_line)
            self.lines += rest
            first, space, start = False, False, end
        if outputs is not None:
            path = (*where, "outputs")
            self.above(path, indent, first, space)
            refs = ", ".join(_ref(r) for r in outputs)
            self.put(path, f"{indent}output {refs}".rstrip())

    def joins(self, where: Path_, graph: list[NodeSpec], i: int) -> bool:
        """Whether item `i` continues the chain of item `i - 1` (`->`)."""
        path = (*where, "graph", i)
        if graph[i].inputs is not None or self.placed.above(path) or path in self.placed.trailing:
            return False
        if self.placed.chained is not None:
            return path in self.placed.chained
        return not graph[i - 1].name and not graph[i].name

    def statement(self, nodes: list[NodeSpec], indent: str) -> list[str]:
        last = nodes[-1]
        head = ""
        if last.name and last.name not in STATEMENTS:
            head = f"{_name(last.name, 'node')} = "
        calls = [self.call(n, alias=n is not last or not head) for n in nodes]
        refs = nodes[0].inputs
        if refs is not None:
            listed = ", ".join(_ref(r) for r in refs)
            bare = len(refs) == 1 and (head or refs[0].split("[")[0] not in STATEMENTS)
            head += f"{listed} -> " if bare else f"({listed}) -> "
        return _chain_lines(indent, head, calls)

    def call(self, node: NodeSpec, alias: bool) -> tuple[str, list[str], str]:
        args = [f"{_name(k, 'attribute')}={self.value(v)}" for k, v in node.attrs.items()]
        if node.repeat is not None:
            args.append(f"repeat={self.value(node.repeat)}")
        tail = f" as {_name(node.name, 'node')}" if alias and node.name else ""
        return f"{_name(node.op, 'op')}(", args, f"){tail}"

    def declaration(self, name: str, decl: ParamDecl) -> str:
        """A block param: `c: int`, `stride=1` or `stride: int = 1`."""
        text = _name(name, "param")
        if decl.type is not None:
            text += f": {decl.type}"
        if decl.default is None:
            return text
        return text + (" = " if decl.type else "=") + self.value(decl.default)

    # -- values ---------------------------------------------------------------------------------

    def value(self, v: Any, dims: bool = False) -> str:
        """A value as the DSL writes it: `${...}` as the expression itself where it reads back
        the same, and in shapes a symbolic dimension as a bare name."""
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            text = float_text(v)
            if text is None:
                raise NlcError(f"{v} cannot be written in a .nlc file", None, "use a finite number")
            return text
        if isinstance(v, list):
            return "[" + ", ".join(self.value(x) for x in v) + "]"
        if isinstance(v, dict):
            pairs = (
                f"{k if _NAME.match(k) else _string(k)}: {self.value(x)}" for k, x in v.items()
            )
            return "{" + ", ".join(pairs) + "}"
        if is_expr(v) and reads_as(v[2:-1], v, self.params, dims):
            return v[2:-1]
        if dims and reads_as(v, v, self.params, dims):
            return v
        return _string(v)


def _chain_lines(indent: str, head: str, calls: list[tuple[str, list[str], str]]) -> list[str]:
    """A statement on one line, or one call per line after `->`, or with one attribute per line
    for a call that still does not fit."""
    flat = [f"{op}{', '.join(args)}{tail}" for op, args, tail in calls]
    one = indent + head + " -> ".join(flat)
    if len(one) <= WIDTH:
        return [one]
    lines = []
    for k, ((op, args, tail), text) in enumerate(zip(calls, flat, strict=True)):
        lead = indent + head if k == 0 else indent + 2 * INDENT
        arrow = " ->" if k < len(calls) - 1 else ""
        if len(lead + text + arrow) <= WIDTH or not args:
            lines.append(lead + text + arrow)
            continue
        base = indent if k == 0 else indent + 2 * INDENT
        lines.append(lead + op)
        lines += [f"{base}{INDENT}{arg}," for arg in args]
        lines.append(base + tail + arrow)
    return lines


def _name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise NlcError(
            f"{what} name {name!r} cannot be written in a .nlc file",
            None,
            "names are letters, digits and `_`, not starting with a digit",
        )
    return name


def _ref(ref: str) -> str:
    if not _REF.match(ref):
        raise NlcError(
            f"reference {ref!r} cannot be written in a .nlc file",
            None,
            "a reference is a node or input name, or name[i] for output i",
        )
    return ref


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
