"""Spec text (YAML or the .nlc DSL) to AST, and AST to IR (`lower`). All source-position
reporting lives here."""

from nlc.frontend.load import load_spec
from nlc.frontend.lower import lower

__all__ = ["load_spec", "lower"]
