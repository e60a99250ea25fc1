"""Generated documents of the spec language: the JSON Schema of YAML specs (spec/nlc.schema.json)
and the generated sections of the language reference (spec/README.md): the grammar and the ops.

Both come from the code (the pydantic AST, spec/nlc.lark, the op registry); tests check that the
committed files are current. Regenerate them with `python -m nlc.frontend.reference`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from nlc.frontend.ast import IncludeSpec, ModelSpec
from nlc.frontend.dsl import TYPES
from nlc.frontend.load import describe_type
from nlc.frontend.train_ast import (
    CheckpointSpec,
    DataSpec,
    EarlyStoppingSpec,
    GroupSpec,
    LossSpec,
    OptimizerSpec,
    PipelineSpec,
    ScheduleSpec,
    TokenizerSpec,
    TrackingSpec,
    TrainSpec,
)
from nlc.frontend.yaml_format import flow
from nlc.ops import REGISTRY, Op
from nlc.resources import data_dir

EXPRESSION = {
    "type": "string",
    "pattern": r"^\$\{.*\}$",
    "description": "an expression over the params in scope, e.g. ${width * 2}",
}
# A search space's value markers (nlc.search.markers): where a scalar goes, a choice of several.
CHOICE = {
    "description": "a search choice (nlc search): {choice: [...]}, {int: [lo, hi], step}, or "
    "{float: [lo, hi], log, step}",
    "oneOf": [
        {
            "type": "object",
            "properties": {"choice": {"type": "array", "minItems": 1}},
            "required": ["choice"],
            "additionalProperties": False,
        },
        *(
            {
                "type": "object",
                "properties": {
                    kind: {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                    "step": {"type": "number", "exclusiveMinimum": 0},
                    **({"log": {"type": "boolean"}} if kind == "float" else {}),
                },
                "required": [kind],
                "additionalProperties": False,
            }
            for kind in ("int", "float")
        ),
    ],
}
CHOICE_REF = {"$ref": "#/$defs/Choice"}
# The sections whose scalars a search may choose: the train section and its parts.
SEARCHABLE = (
    "TrainSpec", "DataSpec", "TokenizerSpec", "OptimizerSpec", "GroupSpec", "ScheduleSpec",
    "LossSpec", "EarlyStoppingSpec", "DistillSpec", "IterativeSpec",
)  # fmt: skip
# <!-- generated: NAME --> ... <!-- end generated: NAME --> in spec/README.md
_SECTION = re.compile(r"(<!-- generated: (\w+) -->\n).*?(<!-- end generated: \2 -->)", re.S)


def schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a YAML spec file: a model, a pipeline (a model spec by path and
    its `train:` section), or a file of shared blocks. An op's
    attributes are checked when `op` names a built-in op; any number, boolean or choice may
    also be a `${...}` expression."""
    refs, defs = models_json_schema(
        [(ModelSpec, "validation"), (PipelineSpec, "validation"), (IncludeSpec, "validation")],
        ref_template="#/$defs/{model}",
    )
    defs = defs["$defs"]
    defs["Expression"] = EXPRESSION
    decl = defs["ParamDecl"]
    defs["ParamDecl"] = {
        "description": decl.pop("description"),
        "anyOf": [
            {"enum": list(TYPES), "description": "the param's type"},
            {"type": ["number", "boolean", "string"], "description": "the param's default"},
            decl,
        ],
    }
    defs["NodeSpec"] = _node(defs["NodeSpec"])
    defs["Choice"] = CHOICE
    for spec in ("ModelSpec", "ModelRef"):
        params = defs[spec]["properties"]["params"]["additionalProperties"]
        params["anyOf"].append(CHOICE_REF)
    for name in SEARCHABLE:
        for key, prop in defs[name]["properties"].items():
            defs[name]["properties"][key] = _choices(prop)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "nlc spec, version 1",
        "description": "A model spec for nlc, a pipeline that trains one, or a file of blocks "
        "that specs include. "
        "Reference: spec/README.md.",
        "anyOf": list(refs.values()),
        "$defs": dict(sorted(defs.items())),
    }


def _choices(prop: dict[str, Any]) -> dict[str, Any]:
    """`prop`, where a number, boolean, string or choice may also be a search choice."""
    scalar = prop.get("type") in ("integer", "number", "boolean", "string") or "enum" in prop
    if scalar or any(p.get("type") in ("integer", "number") for p in prop.get("anyOf", [])):
        return {"anyOf": [prop, CHOICE_REF]}
    return prop


def _node(node: dict[str, Any]) -> dict[str, Any]:
    ops = {"anyOf": [{"enum": sorted(REGISTRY)}, {"type": "string"}, CHOICE_REF]}
    node["properties"]["op"] |= ops | {"description": "an op (see `nlc ops`) or a block"}
    node["properties"]["op"].pop("type")  # a string, or a choice of them
    node["properties"]["in"]["anyOf"].insert(0, {"type": "string"})
    node["properties"]["repeat"]["anyOf"].insert(0, CHOICE_REF)
    for flag, what in (
        ("optional", "search whether the item is there (else its input passes through)"),
        ("independent", "each repeat of the item gets its own choices"),
    ):
        node["properties"][flag] = {"type": "boolean", "description": what}
    reserved = {key: True for key in node["properties"]}
    node["allOf"] = [
        {
            "if": {"properties": {"op": {"const": name}}, "required": ["op"]},
            "then": _attributes(REGISTRY[name], reserved),
        }
        for name in sorted(REGISTRY)
    ]
    return {
        "description": node.pop("description"),
        "anyOf": [ops | {"description": "an op or block without attributes"}, node],
    }


def _attributes(op: Op, reserved: dict[str, bool]) -> dict[str, Any]:
    attrs = op.Attrs.model_json_schema()
    properties = {}
    for key, prop in attrs.get("properties", {}).items():
        notes = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
        properties[key] = _expressions(prop) | notes
    out: dict[str, Any] = {
        "properties": reserved | properties,
        "additionalProperties": False,
        "description": op.doc,
    }
    if attrs.get("required"):
        out["required"] = attrs["required"]
    return out


def _expressions(prop: dict[str, Any]) -> dict[str, Any]:
    """`prop`, where each number, boolean or choice may also be a `${...}` expression or a
    search choice."""
    if "anyOf" in prop:
        return {**prop, "anyOf": [_expressions(p) for p in prop["anyOf"]]}
    if "items" in prop:
        prop = {**prop, "items": _expressions(prop["items"])}
    if prop.get("type") in ("integer", "number", "boolean") or "enum" in prop or "const" in prop:
        return {"anyOf": [prop, {"$ref": "#/$defs/Expression"}, CHOICE_REF]}
    return prop


def schema_text() -> str:
    """What `nlc schema` prints and spec/nlc.schema.json holds."""
    return json.dumps(schema(), indent=2) + "\n"


def render_reference(text: str) -> str:
    """spec/README.md with its generated sections rewritten from the code."""
    sections = {"grammar": _grammar_section, "ops": _ops_section, "train": _train_section}
    return _SECTION.sub(lambda m: m.group(1) + sections[m.group(2)]() + m.group(3), text)


def _grammar_section() -> str:
    grammar = (data_dir("spec") / "nlc.lark").read_text(encoding="utf-8")
    terminal = re.compile(r"_?[A-Z][A-Z_]*(\.\d+)?:")
    rules = [
        line
        for line in grammar.splitlines()
        if line.strip() and not line.startswith(("//", "%")) and not terminal.match(line)
    ]
    return "```lark\n" + "\n".join(rules) + "\n```\n"


def _ops_section() -> str:
    parts = []
    for name in sorted(REGISTRY):
        op = REGISTRY[name]
        parts.append(f"### `{name}`\n\n{op.doc} {_arity(op)}\n")
        fields = op.Attrs.model_fields
        if not fields:
            parts.append("No attributes.\n")
            continue
        rows = ["| attribute | type | default | description |", "| --- | --- | --- | --- |"]
        for key, field in fields.items():
            default = "required" if field.is_required() else f"`{flow(field.default)}`"
            kind = describe_type(field.annotation, field.metadata)
            cells = (f"`{key}`", kind, default, field.description or "")
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _train_section() -> str:
    """One table per mapping of the `train:` section, nested mappings by their key."""
    parts = []
    for title, model in (
        ("train", TrainSpec),
        ("train.data", DataSpec),
        ("train.data.tokenizer", TokenizerSpec),
        ("train.loss", LossSpec),
        ("train.optimizer", OptimizerSpec),
        ("train.optimizer.groups[]", GroupSpec),
        ("train.schedule", ScheduleSpec),
        ("train.early_stopping", EarlyStoppingSpec),
        ("train.checkpoint", CheckpointSpec),
        ("train.tracking", TrackingSpec),
    ):
        rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                shown = "see below"
            else:
                shown = "required" if field.is_required() else f"`{flow(_jsonable(default))}`"
            kind = describe_type(field.annotation, field.metadata)
            cells = (f"`{key}`", kind, shown, field.description or "")
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append(f"### `{title}`\n\n{model.__doc__.strip()}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _arity(op: Op) -> str:
    low, high = op.min_inputs, op.max_inputs
    if high is None:
        return f"Inputs: {low} or more."
    return f"Inputs: {low}." if low == high else f"Inputs: {low} to {high}."


def main() -> None:
    """Rewrite spec/nlc.schema.json and the generated sections of spec/README.md."""
    folder = data_dir("spec")
    (folder / "nlc.schema.json").write_text(schema_text(), encoding="utf-8")
    readme = folder / "README.md"
    readme.write_text(render_reference(readme.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
