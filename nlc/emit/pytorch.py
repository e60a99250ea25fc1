"""Decide the PyTorch classes and statements for a graph; `templates/` lays them out.

Each block becomes one `nn.Module` class. Every literal of a class body goes through `lit()`:
when all instances of a block render to the same text up to literals, they share one class
and the literals that differ become constructor arguments (named after the block's params
where the values match), so `layer2`'s blocks reuse `layer1`'s class with other widths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nlc.emit.tree import Group, Instance, build_tree
from nlc.errors import NlcError
from nlc.ir import Graph, Node, Value
from nlc.ops import REGISTRY
from nlc.ops.base import Op

_HOLE = re.compile(r"\x00(\d+)\x00")
_OPTIONAL = re.compile(r"\x01, \w+=\x00(\d+)\x00\x01")
_LAYER_CLASSES = frozenset(op.layer for op in REGISTRY.values() if op.layer)
# Builtins that constructor bodies call: an argument of that name would shadow them.
_INIT_BUILTINS = frozenset({"super", "range", "float"})


@dataclass
class ClassDef:
    name: str
    comment: str
    args: list[str]  # constructor parameters, annotated
    init: list[str]
    forward_args: list[str]
    forward: list[str]
    returns: str


@dataclass
class Emission:
    classes: list[ClassDef]
    layers: list[str]  # custom layer classes needed from layers.py, sorted
    needs_functional: bool


@dataclass
class _Body:
    """An instance rendered with holes where its literals go."""

    text: str  # init, forward and signature joined: what must match to share a class
    init: list[str]
    forward_args: list[str]
    forward: list[str]
    returns: str
    lits: list[tuple[Any, str]] = field(default_factory=list)
    defaults: dict[int, Any] = field(default_factory=dict)  # hole -> default of an optional kwarg


def emit(graph: Graph, block_lines: dict[str, int] | None = None) -> Emission:
    """Classes and statements for `graph`; `block_lines` gives each block's line in the
    package's resolved `spec.yaml`, quoted in the comment above its class."""
    return _Emitter(graph, block_lines or {}).run()


def camel(name: str) -> str:
    """
    >>> camel("conv_bn"), camel("basic")
    ('ConvBn', 'Basic')
    """
    return "".join(p[:1].upper() + p[1:] for p in name.split("_") if p)


def attr_path(qualified: str) -> str:
    """`layer1.0.conv.weight` -> `self.layer1[0].conv.weight`"""
    out = "self"
    for part in qualified.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


class _Emitter:
    def __init__(self, graph: Graph, block_lines: dict[str, int]):
        self.graph = graph
        self.block_lines = block_lines
        self.users = graph.users()
        self.layers: set[str] = set()
        self.functional = False
        # instance path -> (class name, constructor keyword arguments)
        self.ctor: dict[str, tuple[str, dict[str, Any]]] = {}
        self.classes: list[ClassDef] = []
        # Module-level names of model.py a block class must not shadow.
        self.taken_names = {"Model", "F", *_LAYER_CLASSES}

    def run(self) -> Emission:
        root = build_tree(self.graph)
        by_block: dict[str, list[Instance]] = {}
        deps: dict[str, set[str]] = {}
        self._collect(root, by_block, deps)
        for block in _leaves_first(deps):
            self._emit_block(block, by_block[block])
        body = self._render(root)
        init = body.init + self._ties() + self._cast()
        fill = _fill(body, lambda i, v: _literal(v), keep={})
        self.classes.append(
            ClassDef(
                "Model",
                f"# The model `{self.graph.name}`.",
                [],
                [fill(s) for s in init],
                body.forward_args,
                [fill(s) for s in body.forward],
                body.returns,
            )
        )
        return Emission(self.classes, sorted(self.layers), self.functional)

    def _collect(self, inst: Instance, by_block, deps) -> None:
        for child in _children(inst):
            if child.frame.block is not None:
                by_block.setdefault(child.frame.block, []).append(child)
                deps.setdefault(child.frame.block, set())
                if inst.frame is not None and inst.frame.block is not None:
                    deps.setdefault(inst.frame.block, set()).add(child.frame.block)
            self._collect(child, by_block, deps)

    def _emit_block(self, block: str, instances: list[Instance]) -> None:
        # Omitting default-valued keywords reads better; spelling them out may let instances
        # that differ only there share one class. Take whichever needs fewer classes.
        variants = self._variants(instances, explicit=False)
        if len(variants) > 1:
            explicit = self._variants(instances, explicit=True)
            if len(explicit) < len(variants):
                variants = explicit
        base = camel(block)
        if base in self.taken_names:
            base += "Block"
        for members in variants.values():
            name, n = base, 1
            while name in self.taken_names:
                n += 1
                name = f"{base}{n}"
            self.taken_names.add(name)
            self._emit_class(name, block, members)

    def _variants(self, instances: list[Instance], explicit: bool):
        variants: dict[str, list[tuple[Instance, _Body]]] = {}
        for inst in instances:
            body = self._render(inst, explicit)
            variants.setdefault(body.text, []).append((inst, body))
        return variants

    def _emit_class(self, name: str, block: str, members: list[tuple[Instance, _Body]]) -> None:
        first = members[0][1]
        columns = [[body.lits[i][0] for _, body in members] for i in range(len(first.lits))]
        params = [dict(inst.frame.args) for inst, _ in members]
        arg_of: dict[int, str] = {}
        by_column: dict[str, str] = {}
        args: list[tuple[str, Any]] = []
        for i, col in enumerate(columns):
            if all(_same(v, col[0]) for v in col):
                continue
            key = repr(col)
            if key not in by_column:
                match = next(
                    (p for p in params[0] if p not in _INIT_BUILTINS and _matches(params, p, col)),
                    None,
                )
                if match is None:
                    taken = {a for a, _ in args} | set(params[0]) | _INIT_BUILTINS
                    prefixed = first.lits[i][1]
                    bare = prefixed.rsplit(".", 1)[-1]
                    match = bare if bare not in taken else prefixed.replace(".", "_")
                    while match in taken:
                        match += "_"
                arg = match
                by_column[key] = arg
                args.append((arg, col))
            arg_of[i] = by_column[key]
        # Block params first, in declaration order, then derived arguments in order of use.
        order = list(params[0])
        args.sort(key=lambda a: order.index(a[0]) if a[0] in order else len(order))
        fill = _fill(first, lambda i, v: arg_of.get(i) or _literal(v), keep=arg_of)
        line = self.block_lines.get(block)
        where = f" (spec.yaml:{line})" if line else ""
        self.classes.append(
            ClassDef(
                name,
                f"# Block `{block}`{where}.",
                [f"{a}: {_annotation(values)}" for a, values in args],
                [fill(s) for s in first.init],
                first.forward_args,
                [fill(s) for s in first.forward],
                first.returns,
            )
        )
        for inst, body in members:
            kwargs = {}
            for a, _ in args:
                i = next(i for i, name in arg_of.items() if name == a)
                kwargs[a] = body.lits[i][0]
            self.ctor[inst.path] = (name, kwargs)

    # -- rendering one instance -------------------------------------------------------------

    def _render(self, inst: Instance, explicit: bool = False) -> _Body:
        body = _Body("", [], [], [], "")

        def lit(prefix: str) -> _Recorder:
            return _Recorder(body, prefix, explicit)

        inputs = [name for name, _ in inst.inputs]
        steps = [self._step(item, lit, inputs) for item in inst.items]
        outputs = inst.outputs if inst.frame else list(self.graph.outputs.values())
        body.init = [line for _, _, init, _ in steps for line in init]
        steps = _live(steps, outputs)
        names = _Names(inst.inputs, steps, outputs, self.graph.type_of)
        body.forward_args = inputs
        for consumes, produces, _, call in steps:
            args = [names.of(v) for v in consumes]
            targets = names.assign(consumes, produces)
            body.forward += call(args, targets)
        body.returns = ", ".join(names.of(v) for v in outputs)
        body.text = "\n".join([*body.init, "--", *body.forward_args, *body.forward, body.returns])
        return body

    def _step(self, item, lit, inputs: list[str]):
        if isinstance(item, Node):
            return self._node_step(item, lit)
        if isinstance(item, Group):
            return self._group_step(item, lit, inputs)
        return self._instance_step(item, lit)

    def _node_step(self, node: Node, lit):
        op = REGISTRY[node.op]
        self._note_layer(op)
        local = node.local_name
        ins = self.graph.input_types(node)
        ctor = op.module(node.attrs, ins, lit(local))
        init = [f"self.{local} = {ctor}"] if ctor is not None else []
        init += op.init(node.attrs, f"self.{local}", lit(local)) if ctor is not None else []
        mod = f"self.{local}" if ctor is not None else None

        def call(args, targets):
            self.functional |= "F" in op.needs  # only calls use F, and dead steps are not called
            return [f"{', '.join(targets)} = {op.call(node.attrs, args, mod, lit(local))}"]

        return (
            list(node.inputs),
            [Value(node.name, i) for i in range(len(node.outputs))],
            init,
            call,
        )

    def _ctor_call(self, member: Instance | Node, record) -> str:
        if isinstance(member, Node):
            op = REGISTRY[member.op]
            self._note_layer(op)
            return op.module(member.attrs, self.graph.input_types(member), record)
        cls, kwargs = self.ctor[member.path]
        return f"{cls}({', '.join(f'{k}={record(v, k)}' for k, v in kwargs.items())})"

    def _instance_step(self, inst: Instance, lit):
        local = inst.local
        init = [f"self.{local} = {self._ctor_call(inst, lit(local))}"]

        def call(args, targets):
            return [f"{', '.join(targets)} = self.{local}({', '.join(args)})"]

        return [v for _, v in inst.inputs], list(inst.outputs), init, call

    def _group_step(self, group: Group, lit, inputs: list[str]):
        local = group.local
        members = [self._member(m) for m in group.members]
        record = lit(local)
        plain = [self._ctor_call(m, _Inline()) for m in members]
        if all(p == plain[0] for p in plain):
            one = self._ctor_call(members[0], record)
            n = record(len(members), "depth")
            init = [f"self.{local} = nn.ModuleList([{one} for _ in range({n})])"]
        else:
            items = ", ".join(self._ctor_call(m, record) for m in members)
            init = [f"self.{local} = nn.ModuleList([{items}])"]
        extra = []
        if isinstance(members[0], Node):  # a repeated op: its own initialisation, per copy
            extra = REGISTRY[members[0].op].init(members[0].attrs, "layer", record)
        if extra:
            init += [f"for layer in self.{local}:", *(f"    {line}" for line in extra)]
        first, last = group.members[0], group.members[-1]
        loop_var = "block" if first.frame.block else "layer"
        while loop_var in inputs:  # an input of that name may be read after the loop
            loop_var += "_"

        def call(args, targets):
            if len(args) != 1 or len(targets) != 1:  # `repeat: 1` of a multi-input/output block
                return [f"{', '.join(targets)} = self.{local}[0]({', '.join(args)})"]
            (x,), (h,) = args, targets
            lines = [] if x == h else [f"{h} = {x}"]
            return [*lines, f"for {loop_var} in self.{local}:", f"    {h} = {loop_var}({h})"]

        return [v for _, v in first.inputs], list(last.outputs), init, call

    def _member(self, inst: Instance) -> Instance | Node:
        if inst.frame.block is None:
            (node,) = inst.items
            return node
        return inst

    def _note_layer(self, op: Op) -> None:
        if op.layer:
            self.layers.add(op.layer)

    def _ties(self) -> list[str]:
        return [
            f"{attr_path(name)} = {attr_path(p.tied_to)}"
            for name, p in self.graph.parameters()
            if p.tied_to is not None
        ]

    def _cast(self) -> list[str]:
        """After the `quantize` pass to fp16/bf16, the model holds its weights in that dtype
        and expects floating-point inputs in it too."""
        dtype = self.graph.meta.get("quantize", {}).get("dtype")
        if dtype not in ("f16", "bf16"):
            return []
        name = {"f16": "float16", "bf16": "bfloat16"}[dtype]
        return [f"self.to(torch.{name})  # quantize pass: {name} weights; feed {name} inputs"]


class _Names:
    """Variable names for a straight-line forward: a step reuses its first input's name once
    that value is dead (and the dtype stays), as in hand-written `x = self.bn(x)`."""

    def __init__(self, inputs, steps, outputs, type_of):
        self.type_of = type_of
        self.var: dict[Value, str] = {}
        for name, v in inputs:  # a value passed to two inputs is read through the first
            self.var.setdefault(v, name)
        self.remaining: dict[Value, int] = {}
        for consumes, *_ in steps:
            for v in consumes:
                self.remaining[v] = self.remaining.get(v, 0) + 1
        for v in outputs:
            self.remaining[v] = self.remaining.get(v, 0) + 1
        # Variable name -> how many of its values are still to be read, kept up to date so
        # that each step costs O(1) rather than a scan of every value of the body.
        self.live: dict[str, int] = {}
        for v, name in self.var.items():
            self._hold(v, name)

    def _hold(self, v: Value, name: str) -> None:
        if self.remaining.get(v, 0) > 0:
            self.live[name] = self.live.get(name, 0) + 1

    def _release(self, v: Value) -> None:
        self.remaining[v] -= 1
        if self.remaining[v] == 0 and v in self.var:
            name = self.var[v]
            self.live[name] -= 1
            if not self.live[name]:
                del self.live[name]

    def of(self, value: Value) -> str:
        if value not in self.var:
            raise NlcError(f"internal error: value {value} has no variable")
        return self.var[value]

    def assign(self, consumes: list[Value], produces: list[Value]) -> list[str]:
        for v in consumes:
            self._release(v)
        live = self.live
        names = []
        if (
            len(produces) == 1
            and consumes
            and self.var[consumes[0]] not in live
            and self.type_of(consumes[0]).dtype == self.type_of(produces[0]).dtype
        ):
            names.append(self.var[consumes[0]])
        else:
            for _ in produces:
                names.append(_fresh(live.keys() | set(names)))
        for v, name in zip(produces, names, strict=True):
            self.var[v] = name
            self._hold(v, name)
        return names


def _fresh(taken: set[str]) -> str:
    if "h" not in taken:
        return "h"
    i = 1
    while f"h{i}" in taken:
        i += 1
    return f"h{i}"


def _live(steps, outputs: list[Value]):
    """The steps the outputs depend on. A dead step keeps its module (it holds parameters)
    but is not called, as nobody would write an unused call by hand."""
    needed = set(outputs)
    live = []
    for step in reversed(steps):
        consumes, produces, *_ = step
        if needed.intersection(produces):
            needed.update(consumes)
            live.append(step)
    return live[::-1]


def _children(inst: Instance):
    for item in inst.items:
        if isinstance(item, Instance):
            yield item
        elif isinstance(item, Group):
            yield from item.members


def _leaves_first(deps: dict[str, set[str]]) -> list[str]:
    order: list[str] = []

    def visit(b: str) -> None:
        if b in order:
            return
        for d in sorted(deps[b]):
            visit(d)
        order.append(b)

    for b in deps:
        visit(b)
    return order


def _literal(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'  # repr gives `inf`, which is not a Python name
    if not isinstance(value, (int, float, str, bool, list, tuple, type(None))):
        raise NlcError(f"internal error: cannot emit literal {value!r}")
    return repr(value)


class _Recorder:
    """A `Lit` that leaves a numbered hole and records (value, hint) for the class builder."""

    def __init__(self, body: _Body, prefix: str, explicit: bool):
        self.body, self.prefix, self.explicit = body, prefix, explicit

    def __call__(self, value: Any, hint: str) -> str:
        # The hint keeps the node prefix after a dot; the class builder drops it if unambiguous.
        self.body.lits.append((value, f"{self.prefix}.{hint}" if self.prefix else hint))
        return f"\x00{len(self.body.lits) - 1}\x00"

    def optional(self, name: str, value: Any, default: Any) -> str:
        hole = self(value, name)
        self.body.defaults[len(self.body.lits) - 1] = default
        return f"\x01, {name}={hole}\x01"


class _Inline:
    """A `Lit` that writes values as they are."""

    explicit = False

    def __call__(self, value: Any, hint: str) -> str:
        return _literal(value)


def _matches(params: list[dict[str, Any]], name: str, column: list[Any]) -> bool:
    """Whether block param `name` has the column's value in every instance."""
    return all(_same(p.get(name), v) for p, v in zip(params, column, strict=True))


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _fill(body: _Body, choose: Callable[[int, Any], str], keep) -> Callable[[str], str]:
    """Substitute the holes of one line; drop optional keywords that stay at their default."""

    def hole(m: re.Match) -> str:
        i = int(m.group(1))
        return choose(i, body.lits[i][0])

    def optional(m: re.Match) -> str:
        i = int(m.group(1))
        value = body.lits[i][0]
        if i not in keep and _same(value, body.defaults[i]):
            return ""
        return _HOLE.sub(hole, m.group(0).strip("\x01"))

    return lambda line: _HOLE.sub(hole, _OPTIONAL.sub(optional, line))


def _annotation(values: list[object]) -> str:
    """The type of a block argument from its value in every instance, e.g. `int | None`."""
    names = dict.fromkeys("None" if v is None else type(v).__name__ for v in values)
    return " | ".join(names)
