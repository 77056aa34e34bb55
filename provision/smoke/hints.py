"""From a smoke failure's own error text to the next step (and the fix that cures it, if any).

The table is data: provision/data/smoke_failures.toml, first match wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from provision.resources import load_table


@dataclass(frozen=True)
class Hint:
    id: str
    next_step: str
    fix: str | None = None


@cache
def _table() -> tuple[tuple[str, re.Pattern[str], str, str | None], ...]:
    data = load_table("smoke_failures.toml")
    return tuple(
        (row["id"], re.compile(row["pattern"], re.MULTILINE), row["next"], row.get("fix"))
        for row in data["failure"]
    )


class _Keep(dict):
    """format_map that leaves unknown {placeholders} as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def hint_for(error: dict[str, Any], context: dict[str, Any]) -> Hint:
    """The next step for a runner error report ({"type", "message", ...})."""
    text = f"{error.get('type', '')}: {error.get('message', '')}"
    for ident, pattern, template, fix in _table():
        found = pattern.search(text)
        if found:
            values = _Keep(context)
            values["match1"] = found.group(1) if pattern.groups else ""
            try:
                step = template.format_map(values)
            except (ValueError, TypeError):  # a placeholder with a format spec and no value
                step = template
            return Hint(ident, " ".join(step.split()), fix)
    raise AssertionError("smoke_failures.toml must end with a catch-all entry")  # pragma: no cover
