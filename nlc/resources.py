"""Locate data folders (templates, targets, spec) in a wheel install or a source checkout."""

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder `name` shipped as `nlc/_data/<name>` or found at the repository root."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"nlc data folder {name!r} is missing from this installation")
