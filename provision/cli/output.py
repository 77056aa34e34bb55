"""Printing results: rich for people, JSON (`--json`) for scripts. Commands call `emit`.

Under `--json` every command prints one versioned envelope (docs/json.md):
`{"version": 1, "command": "direction setup", "ok": true, "result": ..., "error": null}`.
`emit` prints it for a result; `emit_error` for a failure (ok false, the error, and whatever
result the command got to, such as a failed setup's stages). Nothing else prints JSON.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provision.errors import ProvisionError

# The envelope's shape: a new key is compatible; a renamed or removed one bumps the version.
ENVELOPE_VERSION = 1

_STATE: dict[str, Any] = {"json": False, "command": None, "short": False}


def record_command(name: str, as_json: bool) -> None:
    """Each command's `--json` flag notes which command runs (the envelope's `command`), eagerly,
    before any other option can fail (provision.cli.options.JsonFlag)."""
    _STATE["command"] = name
    if as_json:
        _STATE["json"] = True


def command_path(ctx: Any) -> str:
    """'direction setup' for `provision direction setup ...`: the names below the program."""
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def note_command(name: str) -> None:
    """The top-level command, for an error raised before the command's own flags are read."""
    _STATE["command"] = name


def short_run(short: bool | None = None) -> bool:
    """Whether the command that runs is one of the short ones (app.COLLECTOR_OFF), which
    main.entry() ends without the interpreter's teardown; `short` records it."""
    if short is not None:
        _STATE["short"] = short
    return bool(_STATE.get("short"))


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
    payload: Any,
    render: Callable[[Any], None],
    as_json: bool = False,
    error: ProvisionError | None = None,
    plain: bool = False,
) -> None:
    """Print `payload` as the JSON envelope's result (objects with to_json() are converted) or
    through `render`, which gets a rich Console, or with `plain` a provision.cli.plain console
    (no rich import). `error`: the command fails although it has a result to show (a model that
    does not fit, a stale lock); the envelope says ok false, and the caller exits non-zero."""
    if use_json(as_json):
        write_envelope(to_jsonable(payload), error)
    elif plain:
        from provision.cli.plain import PlainConsole

        render(PlainConsole())
    else:
        render(console())


def emit_result(
    payload: Any,
    render: Callable[[Any], None],
    as_json: bool,
    error: ProvisionError | None,
    tell: bool = False,
    plain: bool = False,
) -> None:
    """`emit`, then, when `error` says the command failed although it has a result to show (a
    model that does not fit, a stale lock), exit with its code: scripts get the envelope with
    ok false and the error, people the result, and the message too when `tell`."""
    emit(payload, render, as_json, error, plain)
    if error is None:
        return
    if tell and not use_json(as_json):
        raise error  # printed after the result by the entry point
    raise SystemExit(error.exit_code)


def emit_error(exc: ProvisionError, result: Any = None) -> None:
    """A failed command under --json: the envelope with ok false, the error and `result` (what
    the command got to, or null)."""
    write_envelope(to_jsonable(result), exc)


def envelope(result: Any, error: ProvisionError | None = None) -> dict[str, Any]:
    return {
        "version": ENVELOPE_VERSION,
        "command": _STATE["command"],
        "ok": error is None,
        "result": result,
        "error": None if error is None else error_json(error),
    }


def error_json(exc: ProvisionError) -> dict[str, Any]:
    from provision.secrets import redact_text

    # The last guard: a client's message may quote the URL it was given, credentials and all.
    return {
        "message": redact_text(exc.message),
        "hint": redact_text(exc.hint) if exc.hint else exc.hint,
        "code": exc.code,
        "exit_code": exc.exit_code,
    }


def write_envelope(result: Any, error: ProvisionError | None = None) -> None:
    import json  # only for --json: a human check does not load it

    sys.stdout.write(json.dumps(envelope(result, error), indent=2) + "\n")


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
