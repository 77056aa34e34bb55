"""The environment variables provision reads, from one table: provision/data/variables.toml.

docs/configuration.md is generated from the same table (`python -m provision.cli.reference
--write`), so what the docs say a variable does, its default and its bounds are what the code
uses: `env_value` reads a number-valued variable with the table's default and minimum, and a
value that is not a number, or below the minimum, is one message naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from provision.errors import ProvisionError

TYPES = ("path", "text", "int", "float", "flag", "list", "url")
GROUPS = {
    "provision": "provision's own",
    "hub": "Hugging Face and ModelScope clients",
    "pip": "pip's configuration (read as pip reads it, handed to uv)",
    "uv": "uv",
    "docker": "Docker engine",
    "system": "system",
    "tests": "the test suite",
}


@dataclass(frozen=True)
class Variable:
    name: str
    group: str
    type: str
    default: str
    read_by: str
    what: str
    min: float | None = None
    secret: bool = False


@cache
def variables() -> dict[str, Variable]:
    """Every variable of the table, by name, in the table's order; the table is checked here."""
    from provision.resources import load_table

    rows = load_table("variables.toml").get("variable", [])
    out: dict[str, Variable] = {}
    for row in rows:
        var = Variable(**row)
        if var.group not in GROUPS or var.type not in TYPES or var.name in out:
            raise ValueError(f"provision/data/variables.toml: bad row {var.name!r}")
        out[var.name] = var
    return out


def env_value(name: str, environ: Mapping[str, str] | None = None) -> float:
    """`name`'s value as the table types it (int or float), else the table's default.

    An empty value counts as unset. A value that is not a number of that type, or is below the
    table's `min`, raises ProvisionError (exit 2) naming the variable and what it accepts.
    """
    var = variables()[name]
    if var.type not in ("int", "float"):
        raise TypeError(f"{name} is a {var.type}, not a number")
    env = os.environ if environ is None else environ
    raw = (env.get(name) or "").strip()
    convert = int if var.type == "int" else float
    if not raw:
        return convert(var.default)
    bound = "" if var.min is None else f" of at least {convert(var.min)}"
    kind = "an integer" if var.type == "int" else "a number"
    hint = f"Set {name} to {kind}{bound} (default {var.default}), or unset it."
    try:
        value = convert(raw)
    except ValueError:
        raise ProvisionError(f"{name}={raw!r} is not a number.", hint) from None
    if not math.isfinite(value) or (var.min is not None and value < var.min):
        raise ProvisionError(f"{name}={raw!r} is out of range.", hint)
    return value
