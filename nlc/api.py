"""The library entry points; the CLI is a thin layer over these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlc.frontend import load_spec, lower
from nlc.frontend.load import Spec
from nlc.ir import Graph


def load(spec_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Spec, Graph]:
    """Parse, validate and lower a spec file to the IR (shapes inferred, verifier run)."""
    spec = load_spec(spec_path, overrides)
    return spec, lower(spec)


def check(spec_path: str | Path, overrides: dict[str, Any] | None = None) -> Graph:
    return load(spec_path, overrides)[1]


def build(
    spec_path: str | Path, out_dir: str | Path, overrides: dict[str, Any] | None = None
) -> Path:
    """Build the standalone PyTorch package for a spec into `out_dir` (atomically)."""
    from nlc.emit import write_package

    spec, graph = load(spec_path, overrides)
    return write_package(graph, spec, out_dir)
