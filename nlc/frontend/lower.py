"""Lower a spec AST to the IR: evaluate params, expand blocks and `repeat`, infer shapes."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from nlc.errors import NlcError, SourceLoc, did_you_mean
from nlc.frontend.ast import BlockSpec, NodeSpec
from nlc.frontend.expr import resolve
from nlc.frontend.load import Spec
from nlc.frontend.names import check_identifier
from nlc.ir import Frame, Graph, Node, TensorType, Value
from nlc.ir.types import sym
from nlc.ir.verify import verify
from nlc.ops import REGISTRY, ShapeError
from nlc.ops.base import NoAttrs, Op

_REF = re.compile(r"([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?\Z")
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def lower(spec: Spec) -> Graph:
    """Build the IR graph of a loaded spec; raises NlcError pointing at the offending spec item."""
    return _Lowerer(spec).run()


class _Scope:
    """Names visible inside one graph body (a block instance or the model)."""

    def __init__(self, prefix: str, frames: tuple[Frame, ...], env: dict[str, Any]):
        self.prefix, self.frames, self.env = prefix, frames, env
        self.values: dict[str, list[Value]] = {}

    def bind(self, local: str, values: list[Value], loc: SourceLoc | None) -> None:
        if local in self.values:
            raise NlcError(
                f"name {local!r} is already used in this graph", loc, "pick another name"
            )
        self.values[local] = values

    def auto_name(self, base: str) -> str:
        if base not in self.values:
            return base
        i = 1
        while f"{base}_{i}" in self.values:
            i += 1
        return f"{base}_{i}"

    def lookup(self, ref: str, loc: SourceLoc | None) -> Value:
        m = _REF.match(ref) if isinstance(ref, str) else None
        if not m:
            raise NlcError(f"bad input reference {ref!r}", loc, "write a node name, or name[i]")
        name, index = m.group(1), m.group(2)
        if name not in self.values:
            raise NlcError(
                f"undefined name {name!r}",
                loc,
                did_you_mean(name, self.values)
                or f"names defined before this point: {', '.join(self.values) or 'none'}",
            )
        outs = self.values[name]
        i = int(index) if index is not None else 0
        if i >= len(outs):
            raise NlcError(f"{name!r} has {len(outs)} output(s); [{i}] does not exist", loc)
        if index is None and len(outs) > 1:
            raise NlcError(
                f"{name!r} has {len(outs)} outputs",
                loc,
                f"pick one with {name}[0] .. {name}[{len(outs) - 1}]",
            )
        return outs[i]


class _Lowerer:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.ast = spec.ast
        self.graph = Graph(check_identifier(self.ast.name, "model name", self.ast.loc))
        self.active: list[str] = []  # blocks being expanded, for recursion errors
        self.env: dict[str, Any] = {}

    def run(self) -> Graph:
        env = self.env = self._params()
        scope = _Scope("", (), env)
        symbols: set[str] = set()
        for name, t in self.ast.inputs.items():
            check_identifier(name, "input name", t.loc)
            shape = []
            for d in resolve(t.shape, env, t.loc):
                if isinstance(d, bool) or not isinstance(d, (int, str)):
                    raise NlcError(
                        f"input {name!r}: dimension {d!r} is not an int or a symbol", t.loc
                    )
                if isinstance(d, int) and d <= 0:
                    raise NlcError(f"input {name!r}: dimension {d} must be positive", t.loc)
                if isinstance(d, str):
                    check_identifier(d, "symbolic dimension", t.loc)
                    symbols.add(d)
                shape.append(sym(d) if isinstance(d, str) else d)
            self.graph.add(
                Node(name, "input", NoAttrs(), [], [TensorType(tuple(shape), t.dtype)], loc=t.loc)
            )
            scope.bind(name, [Value(name)], t.loc)
        if not self.ast.inputs:
            raise NlcError("the spec declares no inputs", self.ast.loc, "add an `inputs:` section")
        first = Value(next(iter(self.ast.inputs)))
        last = self._body(self.ast.graph, scope, [first])
        self.graph.meta["symbols"] = sorted(symbols)
        self.graph.meta["params"] = env
        for ref in self.ast.outputs or [None]:
            value = scope.lookup(ref, self.ast.loc) if ref else last[0]
            out_name = ref.split("[")[0] if ref else value.node.rsplit(".", 1)[-1]
            if out_name in self.graph.outputs:
                out_name = f"{out_name}_{len(self.graph.outputs)}"
            self.graph.outputs[out_name] = value
        verify(self.graph)
        return self.graph

    def _params(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for key, value in self.ast.params.items():
            check_identifier(key, "param name", self.ast.loc)
            env[key] = resolve(value, env, self.ast.loc)
        return env

    def _body(self, items: list[NodeSpec], scope: _Scope, prev: list[Value]) -> list[Value]:
        if not items:
            raise NlcError("a graph must have at least one node", self.ast.loc)
        for item in items:
            prev = self._item(item, scope, prev)
        return prev

    def _item(self, item: NodeSpec, scope: _Scope, prev: list[Value]) -> list[Value]:
        op = item.op
        if item.inputs is None:
            if len(prev) != 1:
                raise NlcError(
                    f"{op}: the previous item has {len(prev)} outputs",
                    item.loc,
                    "name the input with `in:`",
                )
            ins = list(prev)
        else:
            ins = [scope.lookup(ref, item.attr_loc("in")) for ref in item.inputs]
        local = item.name or scope.auto_name(op)
        check_identifier(local, "node name", item.attr_loc("name") if item.name else item.loc)
        blocks = self.ast.blocks
        if op not in blocks and op not in REGISTRY:
            raise NlcError(
                f"unknown op {op!r}",
                item.attr_loc("op"),
                did_you_mean(op, [*REGISTRY, *blocks]) or "run `nlc ops` to list the ops",
            )
        repeat = resolve(item.repeat, scope.env, item.attr_loc("repeat"))
        if repeat is None:
            outs = self._instance(item, op, local, None, scope, ins)
        else:
            if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
                raise NlcError(
                    f"repeat must be a positive integer, got {repeat!r}", item.attr_loc("repeat")
                )
            if op in REGISTRY and type(REGISTRY[op]).module is Op.module:
                raise NlcError(
                    f"repeat needs a block or an op with a module; {op!r} is a plain function",
                    item.attr_loc("repeat"),
                    "wrap the ops to repeat in a block",
                )
            outs = ins
            for i in range(repeat):
                outs = self._instance(item, op, local, i, scope, outs)
                if len(outs) != 1 and repeat > 1:
                    raise NlcError(f"repeat needs a single-output {op!r}", item.loc)
        scope.bind(local, outs, item.loc)
        return outs

    def _instance(self, item, op, local, index, scope: _Scope, ins: list[Value]) -> list[Value]:
        path = scope.prefix + local + ("" if index is None else f".{index}")
        if op in self.ast.blocks:
            return self._block(item, op, path, local, index, scope, ins)
        frames = scope.frames
        if index is not None:
            frames = (
                *frames,
                Frame(path, None, scope.prefix + local, index, (), (("x", ins[0]),), item.loc),
            )
        return self._primitive(item, op, path, frames, scope, ins)

    def _primitive(self, item, op_name, name, frames, scope: _Scope, ins) -> list[Value]:
        op = REGISTRY[op_name]
        raw = {k: resolve(v, scope.env, item.attr_loc(k)) for k, v in item.attrs.items()}
        try:
            attrs = op.Attrs(**raw)
        except ValidationError as e:
            raise _attr_error(e, op_name, op.Attrs, item) from None
        n_min, n_max = op.min_inputs, op.max_inputs
        if len(ins) < n_min or (n_max is not None and len(ins) > n_max):
            want = (
                f"{n_min}"
                if n_min == n_max
                else f"at least {n_min}"
                if n_max is None
                else f"{n_min}-{n_max}"
            )
            raise NlcError(
                f"{op_name} takes {want} input(s), got {len(ins)}",
                item.attr_loc("in") or item.loc,
                "list the inputs with `in: [a, b]`" if n_min > 1 else None,
            )
        types = [self.graph.type_of(v) for v in ins]
        try:
            outs = op.infer(attrs, types)
            params = op.params(attrs, types)
        except ShapeError as e:
            inputs = ", ".join(f"{v} : {t}" for v, t in zip(ins, types, strict=True))
            raise NlcError(
                f"{op_name} node '{name}': {e.message}; inputs: {inputs}", item.loc, e.hint
            ) from None
        tie = getattr(attrs, "tie", None)
        if tie is not None:
            params = self._tie(params, scope.lookup(tie, item.attr_loc("tie")), item)
        self.graph.add(Node(name, op_name, attrs, ins, outs, params, frames, item.loc))
        return [Value(name, i) for i in range(len(outs))]

    def _tie(self, params, target: Value, item: NodeSpec):
        owner = self.graph.nodes[target.node]
        theirs = owner.params.get("weight")
        mine = params["weight"]
        if theirs is None or theirs.shape != mine.shape:
            got = "no weight" if theirs is None else f"weight {list(theirs.shape)}"
            raise NlcError(
                f"cannot tie to {target.node!r}: it has {got}, this layer needs {list(mine.shape)}",
                item.attr_loc("tie"),
                "tie a linear head to the embedding whose [num, dim] equals [out, in]",
            )
        return {**params, "weight": replace(mine, tied_to=f"{owner.name}.weight")}

    def _block(self, item, name, path, local, index, scope: _Scope, ins) -> list[Value]:
        block: BlockSpec = self.ast.blocks[name]
        if name in self.active:
            chain = " -> ".join([*self.active, name])
            raise NlcError(f"block {name!r} instantiates itself ({chain})", item.loc)
        args = self._bind(block, name, item, scope)
        if len(ins) != len(block.inputs):
            raise NlcError(
                f"block {name!r} takes {len(block.inputs)} input(s) {block.inputs}, got {len(ins)}",
                item.attr_loc("in") or item.loc,
            )
        group = scope.prefix + local if index is not None else None
        frame = Frame(
            path,
            name,
            group,
            index,
            tuple(args.items()),
            tuple(zip(block.inputs, ins, strict=True)),
            block.loc,
        )
        inner = _Scope(path + ".", (*scope.frames, frame), {**self.env, **args})
        for input_name, value in zip(block.inputs, ins, strict=True):
            check_identifier(input_name, "block input", block.loc)
            inner.bind(input_name, [value], block.loc)
        self.active.append(name)
        last = self._body(block.graph, inner, list(ins[:1]))
        self.active.pop()
        if block.outputs is None:
            return last
        return [inner.lookup(ref, block.loc) for ref in block.outputs]

    def _bind(self, block: BlockSpec, name: str, item: NodeSpec, scope: _Scope) -> dict[str, Any]:
        given = item.attrs
        for key in given:
            if key not in block.params:
                raise NlcError(
                    f"block {name!r} has no param {key!r}",
                    item.attr_loc(key),
                    did_you_mean(key, block.params)
                    or f"its params: {', '.join(block.params) or 'none'}",
                )
        args: dict[str, Any] = {}
        for pname, decl in block.params.items():
            if pname in given:
                value = resolve(given[pname], scope.env, item.attr_loc(pname))
                loc = item.attr_loc(pname)
            elif decl.default is not None:
                value = resolve(decl.default, {**self.env, **args}, decl.loc)
                loc = decl.loc
            else:
                raise NlcError(
                    f"block {name!r} needs param {pname!r}",
                    item.loc,
                    f"add `{pname}: ...` to the call",
                )
            expected = decl.type or type(decl.default).__name__
            ok = _TYPES.get(expected, (object,))
            if not isinstance(value, ok) or (expected != "bool" and isinstance(value, bool)):
                raise NlcError(
                    f"param {pname!r} of block {name!r} expects {expected}, got {value!r}", loc
                )
            args[pname] = value
        return args


def _attr_error(e: ValidationError, op: str, model, item: NodeSpec) -> NlcError:
    err = e.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        fields = list(model.model_fields)
        return NlcError(
            f"{op} has no attribute {key!r}",
            item.attr_loc(key),
            did_you_mean(key, fields) or f"its attributes: {', '.join(fields) or 'none'}",
        )
    if err["type"] == "missing":
        return NlcError(f"{op} needs attribute {key!r}", item.loc, f"add `{key}: ...`")
    msg = err["msg"].removeprefix("Value error, ")
    got = f" (got {err['input']!r})" if "input" in err and key else ""
    what = f"attribute {key!r}: " if key else ""
    return NlcError(f"{op}: {what}{msg}{got}", item.attr_loc(key) if key else item.loc)
