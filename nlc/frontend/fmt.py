"""`nlc fmt` and `nlc convert`: read one spec file (no includes followed, no lowering), then print
it in the canonical layout of either format, its comments kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlc.errors import NlcError
from nlc.frontend.ast import IncludeSpec, ModelSpec
from nlc.frontend.dsl import parse_dsl
from nlc.frontend.dsl_format import dsl_units, format_dsl
from nlc.frontend.layout import Layout, place, yaml_layout
from nlc.frontend.train_ast import PipelineSpec
from nlc.frontend.yaml_format import format_yaml, yaml_units
from nlc.frontend.yaml_source import Path_, Positions, parse_yaml, read_source
from nlc.search.space_format import mask, unmask, validate_masked

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Source:
    """A spec file as the formatters need it: its AST and where its parts and comments were."""

    spec: ModelSpec | IncludeSpec | PipelineSpec
    pos: Positions
    layout: Layout
    markers: list[dict[str, Any]]  # a search space's choice markers, placeholders in `spec`


def read(path: str | Path) -> Source:
    """Parse and validate one spec file, `.nlc` or YAML: a pipeline if it names a `model:`, a
    file of shared blocks (see `include`) if it has none of a model's keys."""
    path = Path(path)
    display = str(path)
    text = read_source(path, display)
    if path.suffix == ".nlc":
        parsed = parse_dsl(text, display)
        doc, pos, layout = parsed.doc, parsed.pos, parsed.layout
    else:
        doc, pos = parse_yaml(text, display)
        layout = yaml_layout(text)
    _plain(doc, pos, ())
    doc, markers = mask(doc)
    model_keys = ("name", "params", "inputs", "graph", "outputs")
    kind = IncludeSpec
    if isinstance(doc, dict) and "model" in doc:
        kind = PipelineSpec
    elif isinstance(doc, dict) and any(k in doc for k in model_keys):
        kind = ModelSpec
    return Source(validate_masked(kind, doc, pos, len(markers)), pos, layout, markers)


def _plain(value: Any, pos: Positions, path: Path_) -> None:
    """Refuse what YAML reads besides numbers, text, lists and mappings (an unquoted
    2024-01-01 is a date): neither form can print it."""
    if isinstance(value, dict):
        for key, item in value.items():
            _plain(item, pos, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _plain(item, pos, (*path, i))
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise NlcError(
            f"{value} is a {type(value).__name__}, not a number or text",
            pos.value(path),
            f'quote it to keep it as text: "{value}"',
        )


def render(source: Source, dsl: bool) -> str:
    """The spec as `.nlc` text (`dsl`) or YAML, with the source's comments and blank lines."""
    units = (dsl_units if dsl else yaml_units)(source.spec)
    placed = place(source.layout, source.pos, units, footers=dsl)
    return unmask((format_dsl if dsl else format_yaml)(source.spec, placed), source.markers, dsl)


def format_file(path: str | Path, write: bool = True) -> bool:
    """Rewrite a spec file in its canonical layout (if `write`); whether that changes it."""
    path = Path(path)
    text = render(read(path), path.suffix == ".nlc")
    changed = text != read_source(path, str(path))
    if changed and write:
        path.write_text(text, encoding="utf-8")
    return changed


def convert_file(source: str | Path, target: str | Path) -> None:
    """Write the spec `source` to `target` in the format its suffix names (.nlc or .yaml)."""
    target = Path(target)
    if target.suffix != ".nlc" and target.suffix not in YAML_SUFFIXES:
        raise NlcError(
            f"cannot tell the format of {target} from its suffix",
            None,
            "name the target file *.nlc for the DSL or *.yaml for YAML",
        )
    target.write_text(render(read(source), target.suffix == ".nlc"), encoding="utf-8")
