"""The stable one-line-per-node text form of a graph (golden tests, `nlc ir`, error context)."""

from __future__ import annotations

from nlc.ir.graph import Graph, Node


def _attr_text(node: Node) -> str:
    items = []
    for key, field in type(node.attrs).model_fields.items():
        value = getattr(node.attrs, key)
        if not field.is_required() and value == field.default:
            continue
        if isinstance(value, (list, tuple)):
            value = "(" + ",".join(map(str, value)) + ")"
        items.append(f"{key}={value}")
    return f"[{','.join(items)}]" if items else ""


def format_node(node: Node) -> str:
    """`%layer1.0.conv1 : f32[B,64,56,56] = conv2d[out=64,kernel=3,padding=1](%stem.pool)`"""
    types = ", ".join(map(str, node.outputs))
    if node.op == "input":
        return f"%{node.name} : {types} = input"
    args = ", ".join(map(str, node.inputs))
    params = ""
    if node.params:
        parts = []
        for local, p in node.params.items():
            shape = "x".join(map(str, p.shape))
            parts.append(f"{local}={p.tied_to}" if p.tied_to else f"{local}:{shape}")
        params = "  {" + ", ".join(parts) + "}"
    return f"%{node.name} : {types} = {node.op}{_attr_text(node)}({args}){params}"


def format_graph(graph: Graph) -> str:
    lines = [f"graph {graph.name} {{"]
    lines += ["  " + format_node(n) for n in graph]
    outs = ", ".join(f"{k}={v}" for k, v in graph.outputs.items())
    lines += [f"  return {outs}", "}"]
    return "\n".join(lines) + "\n"
