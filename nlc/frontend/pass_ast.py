"""A `passes:` item of a spec or pipeline file: a pass by name and its options."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from nlc.frontend.spec_item import SpecItem


class PassSpec(SpecItem):
    """A graph pass and its options (`nlc passes` lists the passes and their options)."""

    noun, example = "pass", "{pass: svd, select: 'h.*.fc', rank: 0.5}"

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(alias="pass")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
