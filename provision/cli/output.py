"""Printing results: rich for people, JSON (`--json`) for scripts. Commands call `emit`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

_STATE = {"json": False}

# `--json` works before the command (global) and after it (each reporting command's own flag).
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def use_json(local: bool = False) -> bool:
    if local:
        _STATE["json"] = True
    return _STATE["json"]


def console(stderr: bool = False) -> Any:
    from rich.console import Console  # rich is imported only when something is printed

    stream = sys.stderr if stderr else sys.stdout
    # Piped or redirected (not a terminal) and no COLUMNS: rich would cut tables at 80 columns
    # and names with them ("gemma-3-1…"); a wide console leaves every line whole.
    wide = not os.environ.get("COLUMNS") and not _is_terminal(stream)
    return Console(stderr=stderr, highlight=False, width=PIPE_WIDTH if wide else None)


PIPE_WIDTH = 1000


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def emit(
    payload: Any, render: Callable[[Any], None], as_json: bool = False, plain: bool = False
) -> None:
    """Print `payload` as JSON (objects with to_json() are converted) or through `render`,
    which gets a rich Console, or with `plain` a provision.cli.plain console (no rich import)."""
    if use_json(as_json):
        import json  # only for --json: a human check does not load it

        sys.stdout.write(json.dumps(to_jsonable(payload), indent=2) + "\n")
    elif plain:
        from provision.cli.plain import PlainConsole

        render(PlainConsole())
    else:
        render(console())


def to_jsonable(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value
