"""Print a spec AST as YAML in the canonical layout (what `nlc fmt` gives a YAML spec and
`nlc convert` writes), with the comments and blank lines of the source it came from.

The layout is that of the examples: top-level keys in the order of the spec format, block
mappings down to each graph item, and flow style (`{op: conv2d, out: 64}`, `[B, 3, 32, 32]`)
inside an item, wrapped under its first key when longer than 100 characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from nlc.frontend.ast import BlockSpec, IncludeSpec, ModelSpec, NodeSpec, ParamDecl, TensorSpec
from nlc.frontend.dsl import TYPES, pipeline_settings, sections, settings_of
from nlc.frontend.layout import WIDTH, Placed, Unit, Writer, float_text
from nlc.frontend.train_ast import PipelineSpec
from nlc.frontend.yaml_source import Path_

INDENT = "  "
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# Characters YAML will not keep as they are inside double quotes.
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


def yaml_units(spec: ModelSpec | IncludeSpec | PipelineSpec) -> list[Unit]:
    """The items the YAML printer puts on lines of their own, in the order it prints them."""
    units = [Unit(("nlc",))]
    if isinstance(spec, PipelineSpec):
        units += [Unit(("name",))] if spec.name is not None else []
        return units + [_setting_unit((k,), v) for k, v in pipeline_settings(spec).items()]
    if isinstance(spec, ModelSpec):
        units.append(Unit(("name",)))
    if spec.include:
        units.append(Unit(("include",)))
    if isinstance(spec, ModelSpec):
        if _shows_params(spec):
            units.append(Unit(("params",), [Unit(("params", p)) for p in spec.params]))
        units.append(Unit(("inputs",), [Unit(("inputs", x)) for x in spec.inputs]))
    if spec.blocks:
        units.append(Unit(("blocks",), [_block_unit(n, b) for n, b in spec.blocks.items()]))
    if isinstance(spec, ModelSpec):
        units += _body_units((), spec.graph, spec.outputs)
        units += [_setting_unit((key,), value) for key, value in settings_of(spec).items()]
    return units


def _setting_unit(path: Path_, value: Any) -> Unit:
    """A setting; the keys of a section in block style are units of their own."""
    if _inline(path, value):
        return Unit(path)
    return Unit(path, [_setting_unit((*path, k), v) for k, v in value.items()])


def _inline(path: Path_, value: Any) -> bool:
    """Whether a section's entry is printed on one line: anything but a mapping that holds a
    mapping or that would not fit."""
    if not isinstance(value, dict) or not value:
        return True
    width = len(INDENT) * (len(path) - 1) + len(f"{scalar(path[-1])}: {flow(value)}")
    return len(path) > 1 and width <= WIDTH and not any(isinstance(v, dict) for v in value.values())


def _block_unit(name: str, block: BlockSpec) -> Unit:
    path = ("blocks", name)
    children = []
    if block.params:
        children.append(Unit((*path, "params"), [Unit((*path, "params", p)) for p in block.params]))
    if "inputs" in block.model_fields_set:
        children.append(Unit((*path, "inputs")))
    return Unit(path, children + _body_units(path, block.graph, block.outputs))


def _body_units(where: Path_, graph: list[NodeSpec], outputs: list[str] | None) -> list[Unit]:
    items = [Unit((*where, "graph", i)) for i in range(len(graph))]
    units = [Unit((*where, "graph"), items)]
    return units + ([Unit((*where, "outputs"))] if outputs is not None else [])


def _shows_params(spec: ModelSpec) -> bool:
    return bool(spec.params) or "params" in spec.model_fields_set


def format_yaml(spec: ModelSpec | IncludeSpec | PipelineSpec, placed: Placed | None = None) -> str:
    """The YAML text of `spec`; `placed` says where the source's comments and blank lines go
    (see `layout.place` over `yaml_units`)."""
    return _Printer(placed or Placed()).run(spec)


class _Printer(Writer):
    def run(self, spec: ModelSpec | IncludeSpec | PipelineSpec) -> str:
        self.line(("nlc",), "", "nlc: 1", first=True)
        if isinstance(spec, PipelineSpec):
            if spec.name is not None:
                self.line(("name",), "", f"name: {scalar(spec.name)}")
            for key, value in pipeline_settings(spec).items():
                self.section((key,), value, "")
            return self.text()
        if isinstance(spec, ModelSpec):
            self.line(("name",), "", f"name: {scalar(spec.name)}")
        if spec.include:
            self.line(("include",), "", f"include: {flow(spec.include)}")
        if isinstance(spec, ModelSpec) and _shows_params(spec):
            self.mapping(("params",), spec.params, lambda _, v: flow(v))
        if isinstance(spec, ModelSpec):
            self.mapping(("inputs",), spec.inputs, lambda _, t: _tensor(t))
        if spec.blocks:
            self.line(("blocks",), "", "blocks:")
            for k, (name, block) in enumerate(spec.blocks.items()):
                self.block(name, block, k == 0)
        if isinstance(spec, ModelSpec):
            self.body((), spec.graph, spec.outputs, "")
            blocky = sections(spec)
            for key, value in settings_of(spec).items():
                if key in blocky:
                    self.section((key,), value, "")
                else:
                    self.line((key,), "", f"{scalar(key)}: {flow(value)}")
        return self.text()

    def section(self, path: Path_, value: Any, indent: str, first: bool = False) -> None:
        """A mapping in block style, one key per line, nested mappings indented below it."""
        if _inline(path, value):
            self.line(path, indent, f"{scalar(path[-1])}: {flow(value)}", first)
            return
        self.line(path, indent, f"{scalar(path[-1])}:", first)
        for k, (key, sub) in enumerate(value.items()):
            self.section((*path, key), sub, indent + INDENT, first=k == 0)

    def line(self, path: Path_, indent: str, text: str, first: bool = False) -> None:
        """A unit's line, below its blank lines and comments."""
        self.above(path, indent, first)
        self.put(path, indent + text)

    def mapping(self, path: Path_, items: dict[str, Any], render, indent: str = "") -> None:
        """`key:` and one `name: value` line per item; `{}` when empty."""
        if not items:
            self.line(path, indent, f"{path[-1]}: {{}}")
            return
        self.line(path, indent, f"{path[-1]}:")
        for k, (name, value) in enumerate(items.items()):
            text = f"{scalar(name)}: {render(name, value)}"
            self.line((*path, name), indent + INDENT, text, first=k == 0)

    def block(self, name: str, block: BlockSpec, first: bool) -> None:
        path = ("blocks", name)
        self.line(path, INDENT, f"{scalar(name)}:", first)
        inner = 2 * INDENT
        if block.params:
            params = {k: _declaration(d) for k, d in block.params.items()}
            keyed = [(*path, "params", k) for k in params]
            if any(self.placed.above(p) or p in self.placed.trailing for p in keyed):
                self.mapping((*path, "params"), params, lambda _, v: v, inner)
            else:
                pairs = ", ".join(f"{scalar(k)}: {v}" for k, v in params.items())
                self.line((*path, "params"), inner, f"params: {{{pairs}}}", first=True)
        if "inputs" in block.model_fields_set:
            self.line((*path, "inputs"), inner, f"inputs: {flow(block.inputs)}")
        self.body(path, block.graph, block.outputs, inner)

    def body(self, where: Path_, graph: list[NodeSpec], outputs: list[str] | None, indent: str):
        path = (*where, "graph")
        if not graph:
            self.line(path, indent, "graph: []")
        else:
            self.line(path, indent, "graph:")
            for i, node in enumerate(graph):
                lead = f"{indent}{INDENT}- "
                for k, text in enumerate(_node_lines(node, len(lead))):
                    if k == 0:
                        self.line((*path, i), "", lead + text, first=i == 0)
                    else:
                        self.lines.append(" " * (len(lead) + 1) + text)
        if outputs is not None:
            self.line((*where, "outputs"), indent, f"outputs: {flow(outputs)}")


def _node_lines(node: NodeSpec, column: int) -> list[str]:
    """A graph item: its op name alone, or a flow mapping wrapped to fit from `column` on."""
    pairs: list[tuple[str, Any]] = [("op", node.op)]
    if node.name is not None:
        pairs.append(("name", node.name))
    if node.inputs is not None:
        pairs.append(("in", node.inputs[0] if len(node.inputs) == 1 else node.inputs))
    pairs += node.attrs.items()
    if node.repeat is not None:
        pairs.append(("repeat", node.repeat))
    if len(pairs) == 1:
        return [scalar(node.op)]
    lines = ["{"]
    for k, (key, value) in enumerate(pairs):
        item = f"{scalar(key)}: {flow(value)}"
        if k and column + 1 + len(lines[-1]) + len(item) + 3 > WIDTH:
            lines[-1] += ","
            lines.append(item)
        else:
            lines[-1] += (", " if k else "") + item
    lines[-1] += "}"
    return lines


def _tensor(t: TensorSpec) -> str:
    dtype = f", dtype: {t.dtype}" if "dtype" in t.model_fields_set else ""
    return f"{{shape: {flow(t.shape)}{dtype}}}"


def _declaration(decl: ParamDecl) -> str:
    """A block param in the shortest form YAML reads back the same: `int`, `1`, or both."""
    if decl.type is not None and decl.default is None:
        return decl.type
    if decl.type is None and decl.default is not None and decl.default not in TYPES:
        return flow(decl.default)
    pairs = [
        f"{k}: {flow(v)}"
        for k, v in (("type", decl.type), ("default", decl.default))
        if v is not None
    ]
    return "{" + ", ".join(pairs) + "}"


def flow(value: Any) -> str:
    """A value in YAML's flow style."""
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{scalar(k)}: {flow(v)}" for k, v in value.items()) + "}"
    return scalar(value)


def scalar(value: Any) -> str:
    """A scalar that YAML's safe loader reads back as the same value and type; text stays
    plain where it can, else it is double-quoted."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_text(value) or {"inf": ".inf", "-inf": "-.inf"}.get(str(value), ".nan")
    if _PLAIN.match(value) and yaml.safe_load(value) == value:
        return value
    return _UNPRINTABLE.sub(
        lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False)
    )
