"""Run a pipeline of passes by name: validate options, work on a copy, verify after each."""

from __future__ import annotations

import copy
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from nlc.errors import NlcError, did_you_mean
from nlc.ir import Graph
from nlc.ir.verify import VerifyError, verify
from nlc.passes.base import PASSES, Options, Pass, Weights
from nlc.passes.select import Selection
from nlc.weights import check_weights

if TYPE_CHECKING:
    from nlc.targets import Target


def run_passes(
    graph: Graph,
    weights: Weights | None,
    steps: list[tuple[str, dict[str, Any]]],
    target: Target | None = None,
) -> tuple[Graph, Weights | None, list[dict[str, Any]]]:
    """Apply `steps` (pass name, options) in order to a copy of `graph` (and of the `weights`
    dict; None for a structural run) and return the new graph, weights and the passes' report
    rows. The verifier runs after every pass, and the weights must still fit the graph."""
    passes = [(_lookup(name), _options(name, raw)) for name, raw in steps]
    # Steps whose `select:` the user wrote (`[]`, selecting nothing on purpose, is not one).
    # `rank: auto` may decide to change nothing: that is its answer, not a wrong selection.
    chosen = [
        isinstance(o, Selection) and "select" in (raw or {}) and bool(o.select)
        for (_, raw), (_, o) in zip(steps, passes, strict=True)
    ]
    decides = [getattr(o, "rank", None) == "auto" for _, o in passes]
    for (name, _), (_, options), explicit in zip(steps, passes, chosen, strict=True):
        if explicit:
            _check_selects(graph, name, options)
    graph = copy.deepcopy(graph)
    weights = None if weights is None else dict(weights)
    report: list[dict[str, Any]] = []
    for i, (p, options) in enumerate(passes):
        try:
            result = p.run(graph, weights, options, target)
        except NlcError as e:  # a user error: which layer, option or weight is wrong
            raise NlcError(f"pass {p.name!r}: {e.message}", e.loc, e.hint) from None
        except VerifyError as e:  # a rewrite that changes a shape: a bug of the pass
            raise _broke(p, passes[:i], str(e)) from None
        if (
            chosen[i]
            and not decides[i]
            and not result.modified
            and all("skipped" in r for r in result.report)
        ):
            raise _nothing_to_do(p, result.report)
        graph, weights = result.graph, result.weights
        report += result.report
        try:
            verify(graph)
            if weights is not None:
                check_weights(weights, graph, f"the weights after pass {p.name!r}")
        except (VerifyError, NlcError) as e:
            raise _broke(p, passes[:i], getattr(e, "message", str(e))) from None
    return graph, weights, report


def _check_selects(graph: Graph, name: str, options: Selection) -> None:
    """A `select:` the user wrote must pick a node the pass can rewrite: a glob that matches
    nothing is a typo or a stale name, not a request to do nothing."""
    globs = [options.select] if isinstance(options.select, str) else options.select
    for glob in globs:
        picked = [n for n in graph if fnmatchcase(n.name, glob)]
        if not picked:
            names = [n.name for n in graph]
            raise NlcError(
                f"pass {name!r}: select {glob!r} matches no node of the model",
                None,
                did_you_mean(glob, names) or f"node names: {', '.join(names[:6])}, ...",
            )
        if options.ops and not any(n.op in options.ops for n in picked):
            ops = ", ".join(sorted({n.op for n in picked}))
            raise NlcError(
                f"pass {name!r}: select {glob!r} matches {len(picked)} node(s) ({ops}), none of "
                f"which it rewrites",
                None,
                f"pass {name!r} rewrites {', '.join(options.ops)} nodes",
            )


def _nothing_to_do(p: Pass, rows: list[dict[str, Any]]) -> NlcError:
    """A `select:` whose every node the pass had to skip: say why, node by node."""
    why = "; ".join(f"{r.get('node', r.get('group'))}: {r['skipped']}" for r in rows[:3])
    return NlcError(
        f"pass {p.name!r} can rewrite none of the selected nodes ({why})",
        None,
        "select nodes the pass can change; `nlc passes` lists each pass's options",
    )


def _broke(p: Pass, earlier: list[tuple[Pass, Options]], problem: str) -> NlcError:
    names = ", ".join(repr(q.name) for q, _ in earlier) or "none"
    return NlcError(
        f"pass {p.name!r} broke the model: {problem}",
        None,
        f"passes run before it: {names}; run it alone to narrow the failure down",
    )


def _lookup(name: str) -> Pass:
    p = PASSES.get(name)
    if p is None:
        raise NlcError(
            f"unknown pass {name!r}",
            None,
            did_you_mean(name, PASSES) or f"the passes: {', '.join(sorted(PASSES))}",
        )
    return p


def _options(name: str, raw: dict[str, Any] | None) -> Options:
    model = PASSES[name].Options
    try:
        return model.model_validate(raw or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            raise NlcError(
                f"pass {name!r} has no option {key!r}",
                None,
                did_you_mean(key, model.model_fields)
                or f"its options: {', '.join(model.model_fields)}",
            ) from None
        field = model.model_fields.get(key)
        raise NlcError(
            f"pass {name!r}, option {key!r}: {err['msg'].removeprefix('Value error, ')}",
            None,
            field.description if field is not None else None,
        ) from None
