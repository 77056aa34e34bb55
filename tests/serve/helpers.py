"""What the serve tests share."""

from __future__ import annotations

from typing import Any


def result_of(data: Any) -> Any:
    """A command's --json result, inside the versioned envelope {version, command, ok, result,
    error} that provision.cli.output.emit prints, checked against its contract."""
    from tests.json_contract import check_envelope

    return check_envelope(data)["result"]
