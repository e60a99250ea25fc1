"""Write the generated package: pyproject, model and layers modules, resolved spec, build.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from nlc import __version__
from nlc.emit.pytorch import emit
from nlc.emit.render import format_python, render
from nlc.emit.training import training_files
from nlc.errors import NlcError
from nlc.frontend.load import Spec
from nlc.frontend.yaml_source import parse_yaml
from nlc.ir import Graph
from nlc.resources import data_dir


def package_files(graph: Graph, spec: Spec) -> dict[str, str]:
    """Relative path -> text of every file of the package (deterministic)."""
    name = graph.name
    spec_text = yaml.safe_dump(spec.data, sort_keys=False, allow_unicode=True)
    # Class comments quote the resolved spec.yaml shipped in the package, so a spec written in
    # YAML and the same spec in the DSL give byte-identical packages.
    _, pos = parse_yaml(spec_text, "spec.yaml")
    emission = emit(graph, {b: pos.key(("blocks", b)).line for b in spec.data.get("blocks", {})})
    ctx = {"name": name, "version": __version__}
    model = render(
        "package/model.py.j2",
        classes=emission.classes,
        layers=emission.layers,
        functional=emission.needs_functional,
        **ctx,
    )
    info = {
        "nlc_version": __version__,
        "spec_sha256": hashlib.sha256(spec_text.encode()).hexdigest(),
        "parameters": graph.num_params(),
        "inputs": [
            {"name": n.name, "shape": _shape(n.type), "dtype": n.type.dtype} for n in graph.inputs
        ],
        "outputs": [
            {"name": k, "shape": _shape(graph.type_of(v)), "dtype": graph.type_of(v).dtype}
            for k, v in graph.outputs.items()
        ],
    }
    files = {
        "pyproject.toml": render("package/pyproject.toml.j2", train=spec.ast.train, **ctx),
        f"{name}/__init__.py": render("package/__init__.py.j2", **ctx),
        f"{name}/model.py": format_python(model, "model.py"),
        f"{name}/layers.py": format_python(_layers(emission.layers, ctx), "layers.py"),
    }
    if spec.ast.train is not None:
        files |= training_files(graph, spec)
    return files | {"spec.yaml": spec_text, "build.json": json.dumps(info, indent=2) + "\n"}


def _shape(t) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in t.shape]


def _layers(names: list[str], ctx: dict) -> str:
    sources, needs, done = [], set(), set()

    def add(name: str) -> None:
        # A layer's `# needs:` may name other layer classes: they come first (a subclass).
        head, _, body = (
            (data_dir("templates") / "layers" / f"{name}.py").read_text().partition("\n")
        )
        wants = {n.strip() for n in head.removeprefix("# needs:").split(",")}
        for layer in sorted(wants & layer_names):
            if layer not in done:
                done.add(layer)
                add(layer)
        needs.update(wants)
        sources.append(body.strip())

    layer_names = {p.stem for p in (data_dir("templates") / "layers").glob("*.py")}
    for name in names:
        if name not in done:
            done.add(name)
            add(name)
    imports = ["import torch"]
    if "F" in needs:
        imports.append("import torch.nn.functional as F")
    imports.append("from torch import nn")
    return render("package/layers.py.j2", layers=sources, imports=imports, **ctx)


def write_package(
    graph: Graph,
    spec: Spec,
    out_dir: str | Path,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Write the package atomically: into a temporary sibling folder, then rename into place.

    `finish(tmp_dir)` adds artifacts that need the written package (ONNX, reports); if it raises,
    nothing is left behind and a previous build at `out_dir` stays as it was.
    """
    out = Path(out_dir)
    # Refuse before any work: an ONNX export in `finish` can take half a minute.
    if out.exists() and not (out / "build.json").is_file():
        raise NlcError(
            f"{out} exists and is not an nlc build; refusing to replace it",
            None,
            "choose another output folder with -o, or remove it",
        )
    files = package_files(graph, spec)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise NlcError(f"cannot create output folder {out}: {e.strerror}", None) from None
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if finish is not None:
            finish(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
