"""Rebuild the module hierarchy (block instances, `repeat` groups) from the flat graph."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlc.ir import Frame, Graph, Node, Value


@dataclass
class Instance:
    """A block instance (or the model itself when `frame` is None) and what it contains."""

    frame: Frame | None
    parent: Instance | None = None
    items: list[Node | Instance | Group] = field(default_factory=list)
    inputs: list[tuple[str, Value]] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.frame.path if self.frame else ""

    @property
    def local(self) -> str:
        """Attribute name in the parent (for a repeat group member: the group's name)."""
        f = self.frame
        assert f is not None
        full = f.group if f.group is not None else f.path
        return full.rsplit(".", 1)[-1]


@dataclass
class Group:
    """Consecutive instances from one `repeat`, emitted as an `nn.ModuleList` loop."""

    path: str
    members: list[Instance] = field(default_factory=list)

    @property
    def local(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def build_tree(graph: Graph) -> Instance:
    root = Instance(None, inputs=[(n.name, Value(n.name)) for n in graph.inputs])
    by_path: dict[str, Instance] = {"": root}
    groups: dict[str, Group] = {}
    producer: dict[str, Instance] = {}  # node name -> innermost instance holding it
    for node in graph:
        if node.op == "input":
            continue
        parent = root
        for frame in node.frames:
            inst = by_path.get(frame.path)
            if inst is None:
                inst = by_path[frame.path] = Instance(frame, parent, inputs=list(frame.inputs))
                if frame.group is None:
                    parent.items.append(inst)
                else:
                    group = groups.get(frame.group)
                    if group is None:
                        group = groups[frame.group] = Group(frame.group)
                        parent.items.append(group)
                    group.members.append(inst)
            parent = inst
        parent.items.append(node)
        producer[node.name] = parent
    _mark_outputs(graph, producer)
    _default_outputs(graph, producer, by_path)
    return root


def _mark_outputs(graph: Graph, producer: dict[str, Instance]) -> None:
    """An instance outputs each inner value read outside it (by a later node or the graph)."""

    def read(value: Value, reader: str | None) -> None:
        inst = producer.get(value.node)
        while inst is not None and inst.frame is not None:
            inside = reader is not None and (
                reader == inst.path or reader.startswith(inst.path + ".")
            )
            if not inside and value not in inst.outputs:
                inst.outputs.append(value)
            inst = inst.parent

    for node in graph:
        for v in node.inputs:
            read(v, node.frames[-1].path if node.frames else "")
    for v in graph.outputs.values():
        read(v, None)


def _default_outputs(
    graph: Graph, producer: dict[str, Instance], by_path: dict[str, Instance]
) -> None:
    """An instance whose values nobody reads still returns its last value, as its block would
    (its class needs a return; the caller does not call it)."""
    last: dict[str, Value] = {}
    for node in graph:
        inst = producer.get(node.name)
        while inst is not None and inst.frame is not None:
            last[inst.path] = Value(node.name)
            inst = inst.parent
    for path, value in last.items():
        if not by_path[path].outputs:
            by_path[path].outputs.append(value)
