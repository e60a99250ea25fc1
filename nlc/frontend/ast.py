"""The spec AST (pydantic). Both frontends produce it; the JSON Schema is generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from nlc.errors import SourceLoc

Scalar = int | float | bool | str
DType = Literal["f32", "f16", "bf16", "f64", "i64", "i32", "bool"]
RESERVED_NODE_KEYS = ("op", "name", "in", "repeat")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _loc: SourceLoc | None = PrivateAttr(default=None)

    @property
    def loc(self) -> SourceLoc | None:
        return self._loc


class TensorSpec(_Spec):
    """A model or block input: shape with ints, symbolic dims (`B`, `T`) or `${expr}`."""

    shape: list[int | str]
    dtype: DType = "f32"


class ParamDecl(_Spec):
    """A block parameter: a type, a default, or both (`c: int`, `stride: 1`)."""

    type: Literal["int", "float", "bool", "str"] | None = None
    default: Scalar | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str) and data in ("int", "float", "bool", "str"):
            return {"type": data}
        if isinstance(data, (int, float, bool, str)):
            return {"default": data}
        return data


class NodeSpec(_Spec):
    """One graph item: `op` with attributes inline, or a bare op name such as `relu`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    op: str
    name: str | None = None
    inputs: list[str] | None = Field(default=None, alias="in")
    repeat: int | str | None = None
    _attr_locs: dict[str, SourceLoc] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"op": data}
        if isinstance(data, dict) and isinstance(data.get("in"), str):
            return {**data, "in": [data["in"]]}
        return data

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def attr_loc(self, key: str) -> SourceLoc | None:
        return self._attr_locs.get(key, self._loc)


class BlockSpec(_Spec):
    """A reusable, parameterised sub-graph, called like an op."""

    params: dict[str, ParamDecl] = {}
    inputs: list[str] = ["x"]
    graph: list[NodeSpec]
    outputs: list[str] | None = None
    _file: str = PrivateAttr(default="")


class ModelSpec(_Spec):
    """A spec file, version 1."""

    nlc: Literal[1]
    name: str
    include: list[str] = []
    params: dict[str, Scalar] = {}
    inputs: dict[str, TensorSpec]
    blocks: dict[str, BlockSpec] = {}
    graph: list[NodeSpec]
    outputs: list[str] | None = None


class IncludeSpec(_Spec):
    """An included file: shared blocks (and further includes) only."""

    nlc: Literal[1]
    include: list[str] = []
    blocks: dict[str, BlockSpec] = {}
