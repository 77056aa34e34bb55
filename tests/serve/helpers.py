"""What the serve tests share."""

from __future__ import annotations

from typing import Any

ENVELOPE = {"version", "command", "ok", "result"}


def result_of(data: Any) -> Any:
    """A command's --json result, inside the versioned envelope {version, command, ok, result,
    error} where provision.cli.output.emit wraps it, else as printed."""
    if isinstance(data, dict) and set(data) >= ENVELOPE:
        return data["result"]
    return data
