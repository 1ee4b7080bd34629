"""Shared pieces of the command line: the user-error type and JSON printing."""

from __future__ import annotations

import json


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def print_json(obj: object) -> None:
    """Print ``obj`` as indented JSON (the ``--json`` output of every command)."""
    print(json.dumps(obj, indent=2))


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]
