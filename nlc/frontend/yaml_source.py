"""Safe YAML loading that remembers the line and column of every key and value."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlc.errors import NlcError, SourceLoc, mention

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


def read_source(path: Path, display: str) -> str:
    """The text of a spec file (either form); the failures a person can fix are NlcErrors."""
    if path.is_dir():
        raise NlcError(f"{display} is a folder, not a spec file", None, "pass a .nlc or .yaml file")
    try:
        return path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise NlcError(f"spec file {display} does not exist", None, "check the path") from None
    except UnicodeDecodeError:
        raise NlcError(f"{display} is not UTF-8 text", None, "save the spec as UTF-8") from None
    except OSError as e:
        raise NlcError(
            f"cannot read {display}: {e.strerror}", None, "check the file's permissions"
        ) from None


def load_yaml(path: Path, display: str) -> tuple[Any, Positions]:
    """Parse `path` with the safe loader; `display` is the file name used in messages."""
    return parse_yaml(read_source(path, display), display)


def parse_yaml(text: str, display: str) -> tuple[Any, Positions]:
    """Parse YAML text with the safe loader, recording the position of every key and value."""
    loader = yaml.SafeLoader(text)
    pos = Positions(display)
    try:
        root = loader.get_single_node()
        data = _convert(loader, root, (), pos) if root is not None else None
    except yaml.MarkedYAMLError as e:
        raise _yaml_error(e, display) from None
    except yaml.YAMLError as e:
        raise NlcError(f"invalid YAML: {e}", SourceLoc(display, 1, 1)) from None
    finally:
        loader.dispose()
    return data, pos


# PyYAML's problem text -> a plain message and a hint; `{at}` is where the context started.
_YAML_PROBLEMS = (
    (
        "expected <block end>",
        "bad indentation: this line does not line up with the lines above it",
        "indent the keys of one mapping (or the items of one list) by the same number of spaces",
    ),
    (
        "mapping values are not allowed here",
        "unexpected ':' (a nested key not indented under its parent, or an unquoted ': ')",
        "indent nested keys under their parent, and quote text that contains ': '",
    ),
    (
        "expected ',' or ']'",
        "the list opened at {at} is not closed",
        "add the missing ']' or ','; quote items that contain brackets, e.g. \"parts[0]\"",
    ),
    (
        "expected ',' or '}'",
        "the mapping opened at {at} is not closed",
        "add the missing '}' or ','",
    ),
    (
        "found character '\\t'",
        "a tab character in the indentation",
        "YAML indents with spaces: replace the tab with spaces",
    ),
    (
        "found unexpected end of stream",
        "the quote opened at {at} is not closed",
        "add the closing quote",
    ),
    (
        "but found another document",
        "a spec file holds a single YAML document",
        "remove the `---` separator and what follows it",
    ),
)


def _yaml_error(e: yaml.MarkedYAMLError, display: str) -> NlcError:
    mark = e.problem_mark or e.context_mark
    loc = SourceLoc(display, mark.line + 1, mark.column + 1) if mark else None
    ctx = e.context_mark
    at = f"line {ctx.line + 1}, column {ctx.column + 1}" if ctx else "above"
    problem = e.problem or e.context or ""
    if tag := re.search(r"constructor for the tag '(.*)'", problem):
        return _tag_error(tag.group(1), loc)
    for pattern, message, hint in _YAML_PROBLEMS:
        if pattern in problem:
            return NlcError(f"invalid YAML: {message.format(at=at)}", loc, hint)
    return NlcError(
        f"invalid YAML: {problem or 'cannot parse'}", loc, "check indentation, brackets and quotes"
    )


def _tag_error(tag: str, loc: SourceLoc | None) -> NlcError:
    return NlcError(
        f"YAML tag {tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed",
        loc,
        "a spec is plain data (nlc loads it with YAML's safe loader): remove the tag",
    )


_PLAIN_TAGS = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, pos: Positions) -> Any:
    pos.values[path] = _loc(pos.file, node)
    plain = _PLAIN_TAGS.get(type(node))
    if plain and node.tag != plain:
        # Collections are built here, not by the loader, so their tags must be refused here.
        raise _tag_error(node.tag, _loc(pos.file, node))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise NlcError(
                    "YAML merge keys (<<) are not supported",
                    _loc(pos.file, key_node),
                    "write the keys out, or share the structure with a block",
                )
            if not isinstance(key, str):
                raise NlcError(
                    f"keys must be strings, got {key!r}",
                    _loc(pos.file, key_node),
                    "quote the key if it is meant as text",
                )
            here = _loc(pos.file, key_node)
            if key in out:
                raise NlcError(
                    f"duplicate key {key!r}",
                    here,
                    "keep one of them" + mention("the first is at", pos.keys[(*path, key)], here),
                )
            pos.keys[(*path, key)] = here
            out[key] = _convert(loader, value_node, (*path, key), pos)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*path, i), pos) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
