"""Safe YAML loading that remembers the line and column of every key and value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlc.errors import NlcError, SourceLoc

Path_ = tuple[str | int, ...]


@dataclass
class Positions:
    """Source positions of a loaded document, keyed by the path of keys and indices."""

    file: str
    values: dict[Path_, SourceLoc] = field(default_factory=dict)
    keys: dict[Path_, SourceLoc] = field(default_factory=dict)

    def value(self, path: Path_) -> SourceLoc:
        """Position of the value at `path`, or of the nearest enclosing item that has one."""
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, SourceLoc(self.file, 1, 1))

    def key(self, path: Path_) -> SourceLoc:
        return self.keys.get(path) or self.value(path)


def _loc(file: str, node: yaml.Node) -> SourceLoc:
    return SourceLoc(file, node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(path: Path, display: str) -> tuple[Any, Positions]:
    """Parse `path` with the safe loader; `display` is the file name used in messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NlcError(f"spec file {display} does not exist", None, "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NlcError(f"cannot read spec file {display}: {e}", None) from None
    loader = yaml.SafeLoader(text)
    pos = Positions(display)
    try:
        root = loader.get_single_node()
        data = _convert(loader, root, (), pos) if root is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = SourceLoc(display, mark.line + 1, mark.column + 1) if mark else None
        problem = e.problem or e.context or "invalid YAML"
        raise NlcError(f"invalid YAML: {problem}", loc, "check indentation and quoting") from None
    except yaml.YAMLError as e:
        raise NlcError(f"invalid YAML: {e}", SourceLoc(display, 1, 1)) from None
    finally:
        loader.dispose()
    return data, pos


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, pos: Positions) -> Any:
    pos.values[path] = _loc(pos.file, node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise NlcError("YAML merge keys (<<) are not supported", _loc(pos.file, key_node))
            if not isinstance(key, str):
                raise NlcError(
                    f"keys must be strings, got {key!r}",
                    _loc(pos.file, key_node),
                    "quote the key if it is meant as text",
                )
            if key in out:
                raise NlcError(
                    f"duplicate key {key!r}",
                    _loc(pos.file, key_node),
                    f"{key!r} is already given at {pos.keys[(*path, key)]}",
                )
            pos.keys[(*path, key)] = _loc(pos.file, key_node)
            out[key] = _convert(loader, value_node, (*path, key), pos)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*path, i), pos) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
