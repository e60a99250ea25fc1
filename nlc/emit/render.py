"""Jinja environment over `templates/`, and the formatter applied to emitted Python."""

from __future__ import annotations

import subprocess
from functools import cache

import jinja2
from ruff.__main__ import find_ruff_bin

from nlc.resources import data_dir

LINE_LENGTH = 100


@cache
def environment() -> jinja2.Environment:
    # Templates produce Python and TOML, never HTML: autoescaping would corrupt the code.
    return jinja2.Environment(  # noqa: S701
        loader=jinja2.FileSystemLoader(data_dir("templates")),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def format_python(source: str, filename: str) -> str:
    """Format with ruff (version pinned by nlc), independent of any user configuration."""
    result = subprocess.run(
        [
            find_ruff_bin(),
            "format",
            "--isolated",
            f"--line-length={LINE_LENGTH}",
            "--stdin-filename",
            filename,
            "-",
        ],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"internal error: emitted {filename} does not parse:\n{result.stderr}")
    return result.stdout
