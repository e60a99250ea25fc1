"""Which nodes a pass touches: name globs, op types and enclosing blocks, and the nodes no
decomposition can take (reported as skipped, never an error)."""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase

from pydantic import Field

from nlc.errors import NlcError, did_you_mean
from nlc.ir import Graph, Node
from nlc.passes.base import Options


class Selection(Options):
    """The selection options every pass has; a pass narrows `ops` to what it can rewrite."""

    select: str | list[str] = Field(
        default="*",
        description="fnmatch glob(s) on qualified node names, e.g. 'layer1.*' ('*' also "
        "matches dots)",
    )
    ops: list[str] = Field(default_factory=list, description="op types to rewrite")
    blocks: list[str] | None = Field(
        default=None, description="only nodes inside an instance of one of these blocks"
    )


def selected(graph: Graph, options: Selection) -> Iterator[tuple[Node, str | None]]:
    """The nodes the options pick, in graph order, each with the reason it cannot be rewritten
    (None when it can)."""
    globs = [options.select] if isinstance(options.select, str) else options.select
    blocks = set(options.blocks or ())
    if blocks:
        _check_blocks(graph, blocks)
    shared = {p.tied_to.rsplit(".", 1)[0] for _, p in graph.parameters() if p.tied_to}
    for node in graph:
        if node.op not in options.ops or not any(fnmatchcase(node.name, g) for g in globs):
            continue
        if blocks and not any(f.block in blocks for f in node.frames):
            continue
        yield node, _why_not(graph, node, shared)


def _why_not(graph: Graph, node: Node, shared: set[str]) -> str | None:
    if node.op == "linear":
        if node.attrs.tie is not None:
            return f"its weight is tied to {node.attrs.tie!r}"
        if node.name in shared:
            return "other layers share its weight"
        if not isinstance(graph.input_types(node)[0].shape[-1], int):
            return "its input features are symbolic"
    if node.op == "conv2d":
        if node.attrs.groups > 1:
            return f"grouped convolution (groups={node.attrs.groups})"
        if node.params["weight"].shape[2:] == (1, 1):
            return "1x1 convolution: a matrix, nothing to factor spatially"
    return None


def _check_blocks(graph: Graph, blocks: set[str]) -> None:
    known = {f.block for node in graph for f in node.frames if f.block is not None}
    for name in sorted(blocks - known):
        raise NlcError(
            f"blocks: the model has no instance of a block {name!r}",
            None,
            did_you_mean(name, known) or f"its blocks: {', '.join(sorted(known)) or 'none'}",
        )
