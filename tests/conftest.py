"""Shared fixtures: build specs given as dicts in memory and import the generated packages."""

from __future__ import annotations

import importlib
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import nlc
from nlc.emit.package import package_files
from nlc.frontend.load import Spec
from nlc.ir import Graph


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from the current compiler output instead of comparing",
    )


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--update-golden")


@dataclass
class Built:
    spec: Spec
    graph: Graph
    files: dict[str, str]  # relative path -> text, as `package_files` returns them
    root: Path  # the folder the package was written to

    @property
    def name(self) -> str:
        return self.graph.name

    def text(self, module: str) -> str:
        """The text of `model.py` or `layers.py`."""
        return self.files[f"{self.name}/{module}"]

    def load(self) -> ModuleType:
        """Import the generated package (once) without installing it."""
        sys.path.insert(0, str(self.root))
        try:
            return importlib.import_module(self.name)
        finally:
            sys.path.remove(str(self.root))


class Builder:
    """Writes spec documents under one folder and builds them; every build gets a fresh
    package name so imports of different builds never collide in `sys.modules`."""

    def __init__(self, root: Path):
        self.root = root
        self.counter = itertools.count()

    def write_spec(self, doc: dict[str, Any]) -> Path:
        folder = self.root / f"case{next(self.counter)}"
        folder.mkdir()
        path = folder / "spec.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def build(self, doc: dict[str, Any], unique: bool = True) -> Built:
        """Load, lower and emit `doc`. `unique` suffixes its name to give a fresh package;
        without it, builds of one document compare byte for byte (but share a package name,
        so import at most one of them)."""
        if unique:
            doc = {**doc, "name": f"{doc['name']}_{next(self.counter)}"}
        path = self.write_spec(doc)
        spec, graph = nlc.load(path)
        files = package_files(graph, spec)
        out = path.parent / "package"
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        return Built(spec, graph, files, out)


@pytest.fixture(scope="session")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    return Builder(tmp_path_factory.mktemp("specs"))
