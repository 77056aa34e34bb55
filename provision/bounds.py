"""Numeric inputs checked against what is physically meaningful (provision/data/input_bounds.toml):
one exit-2 message naming the option and the range, before any estimate or search runs."""

from __future__ import annotations

import functools
from typing import Any

from provision.errors import ProvisionError
from provision.resources import load_table


@functools.lru_cache(maxsize=1)
def bounds() -> dict[str, Any]:
    return load_table("input_bounds.toml")


def check_bound(name: str, value: float | None) -> None:
    """Refuse `value` for the input `name` outside its range (None: the default, always fine)."""
    if value is None:
        return
    entry = bounds()[name]
    low, high = entry["min"], entry["max"]
    if isinstance(value, bool) or not low <= value <= high:
        raise ProvisionError(
            f"{entry['option']} {value} is outside {low}..{high} ({entry['why']}).",
            f"Give {entry['option']} a value from {low} to {high}.",
        )
