"""The example specs the tests go through: model specs, and search spaces (`nlc search`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from nlc.search.markers import first_marker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ALL = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
SPACES = [n for n in ALL if first_marker(yaml.safe_load((EXAMPLES / f"{n}.yaml").read_text()))]
MODELS = [n for n in ALL if n not in SPACES]  # plain model specs: they build as they are
