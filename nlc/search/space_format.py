"""`nlc fmt` / `nlc convert` of a search space: the printers work on the validated AST, which has
no room for choice markers, so each marker stands in as a unique placeholder value that the
field accepts (text, else an int, else a float below 1) and is printed back in its place.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from nlc.frontend.load import validate
from nlc.frontend.yaml_format import flow, scalar
from nlc.frontend.yaml_source import Positions
from nlc.search.markers import kind_of

_TEXT = "__nlc_choice{:03d}__"
_INT = 987654000
_FLOAT = "0.9876{:03d}1"


def mask(doc: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The document with each marker replaced by a text placeholder, and the markers in order."""
    markers: list[dict[str, Any]] = []

    def walk(v: Any) -> Any:
        if kind_of(v):
            markers.append(v)
            return _TEXT.format(len(markers) - 1)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(doc), markers


def validate_masked(model: type[BaseModel], doc: Any, pos: Positions, count: int) -> Any:
    """`validate`, with each placeholder that a field refuses as text tried as a number."""
    values: list[Any] = [_TEXT.format(k) for k in range(count)]
    for _ in range(2 * count + 1):
        try:
            model.model_validate(_fill(doc, values))
            break
        except ValidationError as e:
            refused = {_index(err.get("input"), count) for err in e.errors()} - {None}
            if not refused:
                break
            for k in refused:
                values[k] = _INT + k if isinstance(values[k], str) else float(_FLOAT.format(k))
    return validate(model, _fill(doc, values), pos)


def _index(value: Any, count: int) -> int | None:
    for k in range(count):
        if value in (_TEXT.format(k), _INT + k) or value == float(_FLOAT.format(k)):
            return k
    return None


def _fill(doc: Any, values: list[Any]) -> Any:
    if isinstance(doc, str) and doc.startswith("__nlc_choice"):
        return values[int(doc[12:15])]
    if isinstance(doc, dict):
        return {k: _fill(x, values) for k, x in doc.items()}
    if isinstance(doc, list):
        return [_fill(x, values) for x in doc]
    return doc


def unmask(text: str, markers: list[dict[str, Any]], dsl: bool) -> str:
    """The printed spec with the markers written back in place of their placeholders."""
    for k, marker in enumerate(markers):
        name = _TEXT.format(k)
        if dsl:  # an op choice is the called name: `choice(ops=[relu, gelu], ...)`
            ops = "[" + ", ".join(map(str, marker.get("choice", []))) + "]"
            text = re.sub(rf"\b{name}\(\)", f"choice(ops={ops})", text)
            text = re.sub(rf"\b{name}\(", f"choice(ops={ops}, ", text)
        written = _dsl(marker) if dsl else flow(marker)
        number = str(_INT + k)
        for placeholder in (f'"{name}"', name, f"{number}.0", number, _FLOAT.format(k)):
            text = text.replace(placeholder, written)
    return text


def _dsl(value: Any) -> str:
    """A marker in the DSL's literal syntax (text double-quoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_dsl(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dsl(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return scalar(value)
