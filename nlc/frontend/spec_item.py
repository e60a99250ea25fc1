"""The base of every spec AST item: strict keys, and the source position of the item."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from nlc.errors import SourceLoc
from nlc.frontend.yaml_source import Path_, Positions


class SpecItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noun: ClassVar[str]  # what messages call the item, and an example of one
    example: ClassVar[str] = ""
    # Where the item sits in its source file; set by the loader, absent for ASTs built in code.
    _pos: Positions | None = PrivateAttr(default=None)
    _path: Path_ = PrivateAttr(default=())

    def place(self, pos: Positions, path: Path_ = ()) -> None:
        """Record the positions of this item and of every item inside it."""
        self._pos, self._path = pos, path
        for name, field in type(self).model_fields.items():
            _place(getattr(self, name), pos, (*path, field.alias or name))

    @property
    def loc(self) -> SourceLoc | None:
        """The item's name where it has one (`blocks: {mlp: ...}`), else its value."""
        return self._pos.key(self._path) if self._pos else None

    def at(self, *sub: str | int) -> SourceLoc | None:
        """Position of the value at `sub` inside this item (the nearest enclosing one if absent)."""
        return self._pos.value((*self._path, *sub)) if self._pos else None

    def key_at(self, *sub: str | int) -> SourceLoc | None:
        """Position of the key `sub` inside this item, for errors about the key itself."""
        return self._pos.key((*self._path, *sub)) if self._pos else None


def _place(value: Any, pos: Positions, path: Path_) -> None:
    if isinstance(value, SpecItem):
        value.place(pos, path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _place(v, pos, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            _place(v, pos, (*path, k))
