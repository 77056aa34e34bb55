"""Checking a TOML file against a schema written as data (profiles, directions).

A schema maps each key to `(types, required, help)`, to a nested schema (a table), or to
CHECKED_APART (the caller checks that key itself, e.g. an array of tables). Every problem is one
error naming the file, the dotted key and the reason, raised through the caller's error class.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError

# `int` accepts TOML integers only (not booleans).
STR = (str,)
INT = (int,)
BOOL = (bool,)
STRLIST = (list, str)  # a list of strings
CHECKED_APART = "checked apart"

# (file, dotted key or None, reason) -> the error to raise
ErrorFactory = Callable[[Path, str | None, str], ProvisionError]


class FileError(ProvisionError):
    """A file that cannot be used: names the file, the key and the reason. Subclasses say what
    kind of file it is and which command shows a complete example."""

    kind = "file"
    code = "bad_file"
    example = ""

    def __init__(self, path: Path | str, key: str | None, reason: str) -> None:
        where = f"{path}" + (f": key '{key}'" if key else "")
        super().__init__(
            f"Bad {self.kind} {where}: {reason}",
            f"Fix the file (see `{self.example}` for a complete example).",
        )
        self.path = str(path)
        self.key = key
        self.reason = reason


def type_name(value: Any) -> str:
    """How a message names a TOML value's type."""
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def validate(
    data: Any,
    schema: dict[str, Any],
    path: Path,
    error: ErrorFactory,
    prefix: str = "",
    optional_tables: Collection[str] | None = None,
) -> None:
    """Raise `error(path, key, reason)` for the first unknown key, wrong type or missing key.

    `prefix` is the dotted key of `data` plus "." ("" for the file itself). `optional_tables`
    names the nested tables that may be left out (None: every nested table may be).
    """
    if not isinstance(data, dict):
        raise error(path, prefix[:-1] or None, f"must be a table, got {type_name(data)}")
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise error(path, dotted, f"unknown key (known keys here: {known})")
        spec = schema[key]
        if isinstance(spec, dict):
            validate(value, spec, path, error, dotted + ".", optional_tables)
            continue
        if spec == CHECKED_APART:
            continue
        types, _required, help_text = spec
        if types == STRLIST:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise error(path, dotted, f"must be a list of strings ({help_text})")
        elif not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            want = " or ".join(t.__name__ for t in types).replace("str", "string")
            raise error(path, dotted, f"must be {want}, got {type_name(value)} ({help_text})")
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        if key in data or spec == CHECKED_APART:
            continue
        if isinstance(spec, dict):
            if optional_tables is not None and dotted not in optional_tables:
                raise error(path, dotted, "missing table")
        elif spec[1]:
            raise error(path, dotted, f"missing ({spec[2]})")
