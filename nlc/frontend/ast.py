"""The spec AST (pydantic). Both frontends produce it; the JSON Schema is generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from nlc.frontend.pass_ast import PassSpec
from nlc.frontend.search_ast import SearchSpec
from nlc.frontend.spec_item import SpecItem
from nlc.frontend.train_ast import TrainSpec

Scalar = int | float | bool | str
DType = Literal["f32", "f16", "bf16", "f64", "i64", "i32", "bool"]
RESERVED_NODE_KEYS = ("op", "name", "in", "repeat")


class TensorSpec(SpecItem):
    """A model or block input: shape with ints, symbolic dims (`B`, `T`) or `${expr}`."""

    noun, example = "input", "{shape: [B, 3, 32, 32], dtype: f32}"

    shape: list[int | str]
    dtype: DType = "f32"


class ParamDecl(SpecItem):
    """A block parameter: a type, a default, or both (`c: int`, `stride: 1`)."""

    noun, example = "param declaration", "`c: int`, or a default such as `stride: 1`"

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


_PARAM_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def fits(value: Any, type_name: str | None) -> bool:
    """Whether `value` suits a param of that type (ints pass as floats, bools never as numbers).

    >>> fits(3, "float"), fits(True, "int"), fits("a", None)
    (True, False, True)
    """
    if type_name not in _PARAM_TYPES:
        return True
    ok = isinstance(value, _PARAM_TYPES[type_name])
    return ok and (type_name == "bool" or not isinstance(value, bool))


class NodeSpec(SpecItem):
    """One graph item: `op` with attributes inline, or a bare op name such as `relu`."""

    noun, example = "graph item", "{op: linear, out: 64}, or an op name such as relu"

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    op: str
    name: str | None = None
    inputs: list[str] | None = Field(default=None, alias="in")
    repeat: int | str | None = None

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


class BlockSpec(SpecItem):
    """A reusable, parameterised sub-graph, called like an op."""

    noun, example = "block", "{params: {c: int}, graph: [...]}"

    params: dict[str, ParamDecl] = {}
    inputs: list[str] = ["x"]
    graph: list[NodeSpec]
    outputs: list[str] | None = None


class ModelSpec(SpecItem):
    """A spec file, version 1."""

    noun = "spec"

    nlc: Literal[1]
    name: str
    include: list[str] = []
    params: dict[str, Scalar] = {}
    inputs: dict[str, TensorSpec]
    blocks: dict[str, BlockSpec] = {}
    graph: list[NodeSpec]
    outputs: list[str] | None = None
    targets: list[str] = Field(
        default=[],
        description="hardware targets (built-in names or target files) of the build's cost report",
    )
    dims: dict[str, int] = Field(
        default={}, description="sizes of symbolic dims for the cost report (default 1)"
    )
    passes: list[PassSpec] = Field(
        default=[],
        description="compression passes applied in order after lowering (decompositions, ...)",
    )
    train: TrainSpec | None = Field(
        default=None, description="how `nlc train` trains the model; adds train.py to the build"
    )
    search: SearchSpec | None = Field(
        default=None, description="what `nlc search` optimises over the spec's choices"
    )


class IncludeSpec(SpecItem):
    """An included file: shared blocks (and further includes) only."""

    noun = "included spec"

    nlc: Literal[1]
    include: list[str] = []
    blocks: dict[str, BlockSpec] = {}
