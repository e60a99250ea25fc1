"""Lower a spec AST to the IR: evaluate params, expand blocks and `repeat`, infer shapes."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from nlc.errors import NlcError, SourceLoc, did_you_mean, mention
from nlc.frontend.ast import BlockSpec, NodeSpec, fits
from nlc.frontend.expr import resolve
from nlc.frontend.load import Spec, describe_type, plain_message
from nlc.frontend.names import check_identifier
from nlc.ir import Frame, Graph, Node, TensorType, Value
from nlc.ir.types import sym
from nlc.ir.verify import verify
from nlc.ops import REGISTRY, ShapeError
from nlc.ops.base import NoAttrs, Op

_REF = re.compile(r"([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?\Z")
# Far beyond real models (a 1000-layer ResNet has ~10k nodes); stops a runaway `repeat` early.
MAX_NODES = 50_000


def lower(spec: Spec) -> Graph:
    """Build the IR graph of a loaded spec; raises NlcError pointing at the offending spec item.

    A `train:` section is checked against the graph and its defaults resolved in place.
    """
    graph = _Lowerer(spec).run()
    if spec.ast.train is not None:
        from nlc.frontend.train_check import resolve_train

        spec.ast.train = resolve_train(spec, graph)
    return graph


class _Scope:
    """Names visible inside one graph body (a block instance or the model)."""

    def __init__(self, prefix: str, frames: tuple[Frame, ...], env: dict[str, Any]):
        self.prefix, self.frames, self.env = prefix, frames, env
        self.values: dict[str, list[Value]] = {}
        self.locs: dict[str, SourceLoc | None] = {}  # where each name is defined
        self.later: dict[str, SourceLoc | None] = {}  # names of the items not lowered yet
        self.next_suffix: dict[str, int] = {}  # base -> first suffix auto_name may still use

    def claim(self, local: str, loc: SourceLoc | None) -> None:
        """Reserve a name before its item is lowered, so a duplicate is reported at the item."""
        if local in self.locs:
            first = self.locs[local]
            raise NlcError(
                f"name {local!r} is already used in this graph{mention('first at', first, loc)}",
                loc,
                f"give this item another name, e.g. {local}_2",
            )
        self.locs[local] = loc
        self.later.pop(local, None)

    def bind(self, local: str, values: list[Value], loc: SourceLoc | None) -> None:
        self.claim(local, loc)
        self.values[local] = values

    def auto_name(self, base: str) -> str:
        if base not in self.locs:
            return base
        # Names are never released, so the search resumes where the last one for `base`
        # ended: N bare `relu` items cost O(N), not O(N^2).
        i = self.next_suffix.get(base, 1)
        while f"{base}_{i}" in self.locs:
            i += 1
        self.next_suffix[base] = i
        return f"{base}_{i}"

    def lookup(self, ref: Any, loc: SourceLoc | None) -> Value:
        m = _REF.match(ref) if isinstance(ref, str) else None
        if not m:
            raise NlcError(
                f"bad reference {ref!r}", loc, "write a node or input name, or name[i] for output i"
            )
        name, index = m.group(1), m.group(2)
        if name in self.later:
            raise NlcError(
                f"{name!r} is defined later{mention('at', self.later[name], loc)}, "
                "not before this item",
                loc,
                "an item can only read names defined above it; reorder the graph",
            )
        if name not in self.values:
            raise NlcError(
                f"undefined name {name!r}",
                loc,
                did_you_mean(name, self.values)
                or f"names defined before this point: {', '.join(self.values) or 'none'}",
            )
        outs = self.values[name]
        last = f"{name}[{len(outs) - 1}]"
        if index is not None and int(index) >= len(outs):
            raise NlcError(
                f"{name!r} has {len(outs)} output(s); [{index}] does not exist",
                loc,
                f'outputs are numbered from 0: "{name}[0]" .. "{last}"',
            )
        if index is None and len(outs) > 1:
            raise NlcError(
                f"{name!r} has {len(outs)} outputs; say which one",
                loc,
                f'write "{name}[0]" .. "{last}"',
            )
        return outs[int(index or 0)]


class _Lowerer:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.ast = spec.ast
        self.graph = Graph(check_identifier(self.ast.name, "model name", self.ast.at("name")))
        self.active: list[str] = []  # blocks being expanded, for recursion errors
        self.env: dict[str, Any] = {}

    def run(self) -> Graph:
        for name, block in self.ast.blocks.items():
            check_identifier(name, "block name", block.loc)
        env = self.env = self._params()
        scope = _Scope("", (), env)
        symbols: set[str] = set()
        if not self.ast.inputs:
            raise NlcError(
                "the spec declares no inputs",
                self.ast.at("inputs"),
                "declare one, e.g. `inputs: {x: {shape: [B, 3, 32, 32]}}`",
            )
        for name, t in self.ast.inputs.items():
            check_identifier(name, "input name", t.loc)
            shape = [self._dim(name, t, i, d, symbols) for i, d in enumerate(t.shape)]
            self.graph.add(
                Node(name, "input", NoAttrs(), [], [TensorType(tuple(shape), t.dtype)], loc=t.loc)
            )
            scope.bind(name, [Value(name)], t.loc)
        first = Value(next(iter(self.ast.inputs)))
        last = self._body(self.ast.graph, scope, [first], self.ast.at("graph"))
        self.graph.meta["symbols"] = sorted(symbols)
        self.graph.meta["params"] = env
        for i, ref in enumerate(self.ast.outputs or [None]):
            value = scope.lookup(ref, self.ast.at("outputs", i)) if ref else last[0]
            out_name = ref.split("[")[0] if ref else value.node.rsplit(".", 1)[-1]
            if out_name in self.graph.outputs:
                out_name = f"{out_name}_{len(self.graph.outputs)}"
            self.graph.outputs[out_name] = value
        verify(self.graph)
        return self.graph

    def _dim(self, name: str, t, i: int, raw: int | str, symbols: set[str]):
        loc = t.at("shape", i)
        d = resolve(raw, self.env, loc)
        if isinstance(d, bool) or not isinstance(d, (int, str)) or isinstance(d, int) and d <= 0:
            raise NlcError(
                f"input {name!r}: dimension {d!r} must be a positive int or a symbolic name",
                loc,
                "e.g. shape: [B, 3, 224, 224], where B is symbolic (any size)",
            )
        if isinstance(d, int):
            return d
        symbols.add(check_identifier(d, "symbolic dimension", loc))
        return sym(d)

    def _params(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for key, value in self.ast.params.items():
            check_identifier(key, "param name", self.ast.key_at("params", key))
            env[key] = resolve(value, env, self.ast.at("params", key))
        return env

    def _body(
        self, items: list[NodeSpec], scope: _Scope, prev: list[Value], loc: SourceLoc | None
    ) -> list[Value]:
        if not items:
            raise NlcError("the graph is empty", loc, "list at least one op, e.g. `graph: [relu]`")
        scope.later = {item.name: item.at("name") for item in items if item.name}
        for item in items:
            prev = self._item(item, scope, prev)
        return prev

    def _item(self, item: NodeSpec, scope: _Scope, prev: list[Value]) -> list[Value]:
        op = item.op
        if op not in self.ast.blocks and op not in REGISTRY:
            raise NlcError(
                f"unknown op {op!r}",
                item.at("op"),
                did_you_mean(op, [*REGISTRY, *self.ast.blocks])
                or "run `nlc ops` to list the ops, or define a block of that name",
            )
        if item.inputs is None:
            if len(prev) != 1:
                raise NlcError(
                    f"{op}: the previous item has {len(prev)} outputs; say which one to read",
                    item.loc,
                    f'add `in: ["{prev[0].node.rsplit(".", 1)[-1]}[0]"]`',
                )
            ins = list(prev)
        else:
            ins = [scope.lookup(ref, item.at("in", i)) for i, ref in enumerate(item.inputs)]
        local = item.name or scope.auto_name(op)
        check_identifier(local, "node name", item.at("name"))
        scope.claim(local, item.at("name"))
        repeat = resolve(item.repeat, scope.env, item.at("repeat"))
        if repeat is None:
            outs = self._instance(item, op, local, None, scope, ins)
        else:
            self._check_repeat(repeat, op, item)
            outs = ins
            for i in range(repeat):
                outs = self._instance(item, op, local, i, scope, outs)
                if len(outs) != 1 and repeat > 1:
                    raise NlcError(
                        f"repeat needs {op!r} to have one output, it has {len(outs)}",
                        item.at("repeat"),
                        "repeat a block that returns a single output",
                    )
        scope.values[local] = outs
        return outs

    def _check_repeat(self, repeat: Any, op: str, item: NodeSpec) -> None:
        if isinstance(repeat, bool) or not isinstance(repeat, int) or not 0 < repeat <= MAX_NODES:
            raise NlcError(
                f"repeat must be an integer from 1 to {MAX_NODES:,}, got {repeat!r}",
                item.at("repeat"),
                "e.g. repeat: 4, or repeat: ${layers}",
            )
        if op in REGISTRY and type(REGISTRY[op]).module is Op.module:
            raise NlcError(
                f"repeat needs a block or an op with a module; {op!r} is a plain function",
                item.at("repeat"),
                "wrap the ops to repeat in a block and repeat the block",
            )

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
        raw = {k: resolve(v, scope.env, item.at(k)) for k, v in item.attrs.items()}
        try:
            attrs = op.Attrs(**raw)
        except ValidationError as e:
            raise _attr_error(e, op_name, op.Attrs, item) from None
        self._check_arity(op, op_name, len(ins), item)
        types = [self.graph.type_of(v) for v in ins]
        try:
            outs = op.infer(attrs, types)
            params = op.params(attrs, types)
        except ShapeError as e:
            raise self._shape_error(e, name, ins, item) from None
        tie = getattr(attrs, "tie", None)
        if tie is not None:
            params = self._tie(params, scope.lookup(tie, item.at("tie")), item)
        if len(self.graph.nodes) >= MAX_NODES:
            raise NlcError(
                f"the model grows past {MAX_NODES:,} nodes (at {name!r})",
                item.loc,
                "check the `repeat:` counts of this item and of the blocks around it",
            )
        self.graph.add(Node(name, op_name, attrs, ins, outs, params, frames, item.loc))
        return [Value(name, i) for i in range(len(outs))]

    @staticmethod
    def _check_arity(op: Op, op_name: str, n: int, item: NodeSpec) -> None:
        n_min, n_max = op.min_inputs, op.max_inputs
        if n_min <= n and (n_max is None or n <= n_max):
            return
        want = (
            f"{n_min}"
            if n_min == n_max
            else f"at least {n_min}"
            if n_max is None
            else f"{n_min} to {n_max}"
        )
        raise NlcError(
            f"{op_name} takes {want} input(s), got {n}",
            item.at("in"),
            f"list {want} input(s) with `in: [...]`" if n_min > 1 else "give a single input",
        )

    def _shape_error(self, e: ShapeError, name: str, ins: list[Value], item) -> NlcError:
        """The op's complaint, followed by the node and the producer and type of each input."""
        reads = [f"{self._ref(v)!r} ({self.graph.type_of(v)})" for v in ins]
        listed = ", ".join(reads[:-1]) + " and " + reads[-1] if len(reads) > 1 else reads[0]
        return NlcError(f"{e.message}; node {name!r} reads {listed}", item.loc, e.hint)

    def _ref(self, v: Value) -> str:
        many = len(self.graph.nodes[v.node].outputs) > 1
        return f"{v.node}[{v.index}]" if many else v.node

    def _tie(self, params, target: Value, item: NodeSpec):
        owner = self.graph.nodes[target.node]
        theirs = owner.params.get("weight")
        mine = params["weight"]
        if theirs is None or theirs.shape != mine.shape:
            got = "no weight" if theirs is None else f"weight {list(theirs.shape)}"
            raise NlcError(
                f"cannot tie to {target.node!r}: it has {got}, this layer needs {list(mine.shape)}",
                item.at("tie"),
                "tie a linear head to the embedding whose [num, dim] equals [out, in]",
            )
        return {**params, "weight": replace(mine, tied_to=f"{owner.name}.weight")}

    def _block(self, item, name, path, local, index, scope: _Scope, ins) -> list[Value]:
        block: BlockSpec = self.ast.blocks[name]
        if name in self.active:
            chain = " -> ".join([*self.active, name])
            raise NlcError(
                f"block {name!r} instantiates itself ({chain})",
                item.at("op"),
                "a block cannot contain itself; stack copies with `repeat:` instead",
            )
        args = self._bind(block, name, item, scope)
        if len(ins) != len(block.inputs):
            raise NlcError(
                f"block {name!r} takes {len(block.inputs)} input(s) {block.inputs}, got {len(ins)}",
                item.at("in"),
                "pass them in order with `in: [...]`"
                + mention("declared at", block.at("inputs"), item.loc),
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
        for i, (input_name, value) in enumerate(zip(block.inputs, ins, strict=True)):
            check_identifier(input_name, "block input", block.at("inputs", i))
            inner.bind(input_name, [value], block.at("inputs", i))
        self.active.append(name)
        last = self._body(block.graph, inner, list(ins[:1]), block.at("graph"))
        self.active.pop()
        if block.outputs is None:
            return last
        if not block.outputs:
            raise NlcError(
                f"block {name!r} returns nothing (`outputs: []`)",
                block.at("outputs"),
                "list the names it returns, or drop `outputs:` to return the last item",
            )
        return [inner.lookup(ref, block.at("outputs", i)) for i, ref in enumerate(block.outputs)]

    def _bind(self, block: BlockSpec, name: str, item: NodeSpec, scope: _Scope) -> dict[str, Any]:
        given = item.attrs
        for key in given:
            if key not in block.params:
                raise NlcError(
                    f"block {name!r} has no param {key!r}",
                    item.key_at(key),
                    did_you_mean(key, block.params)
                    or f"its params: {', '.join(block.params) or 'none'}",
                )
        args: dict[str, Any] = {}
        for pname, decl in block.params.items():
            if pname in given:
                value = resolve(given[pname], scope.env, item.at(pname))
                loc = item.at(pname)
            elif decl.default is not None:
                value = resolve(decl.default, {**self.env, **args}, decl.at())
                loc = decl.at()
            else:
                raise NlcError(
                    f"block {name!r} needs param {pname!r}",
                    item.loc,
                    f"add `{pname}: ...` to this item" + mention("declared at", decl.loc, item.loc),
                )
            expected = decl.type or type(decl.default).__name__
            if not fits(value, expected):
                raise NlcError(
                    f"param {pname!r} of block {name!r} expects type {expected}, got {value!r}",
                    loc,
                    f"give `{pname}` a value of type {expected}"
                    + mention("declared at", decl.loc, loc),
                )
            args[pname] = value
        return args


def _attr_error(e: ValidationError, op: str, model, item: NodeSpec) -> NlcError:
    # A misspelt attribute also makes the right one missing; the unknown key is the real cause.
    err = min(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
    key = str(err["loc"][0]) if err["loc"] else ""
    fields = model.model_fields
    if err["type"] == "extra_forbidden":
        return NlcError(
            f"{op} has no attribute {key!r}",
            item.key_at(key),
            did_you_mean(key, fields) or f"its attributes: {', '.join(fields) or 'none'}",
        )
    if err["type"] == "missing":
        return NlcError(
            f"{op} needs attribute {key!r}",
            item.loc,
            f"add `{key}: ...` ({describe_type(fields[key].annotation, fields[key].metadata)})",
        )
    msg = plain_message(err["msg"])
    if key not in fields:  # a rule over several attributes
        return NlcError(f"{op}: {msg}", item.loc, "`nlc ops` lists the attributes of every op")
    field = fields[key]
    if err["type"] == "value_error":  # the attribute's own rule, which explains itself
        return NlcError(
            f"{op}: {msg}", item.at(key), f"change `{key}`; `nlc ops` lists every attribute"
        )
    return NlcError(
        f"{op}: attribute {key!r} {msg}, got {err['input']!r}",
        item.at(key),
        f"`{key}` takes {describe_type(field.annotation, field.metadata)}",
    )
