"""The shapes a lockfile's values must have before anything reads them.

A lock is valid TOML written by uv (PEP 751) and by provision (`[tool.provision]`); one edited by
hand, cut and pasted, or written by another tool can still put a string where a table belongs.
Every reader (`docker`, `setup --from-lock`, `lock --check`, `download --lock`...) goes through
`read_lock`, which checks these shapes once, so a wrong type is one message naming the file and
the dotted field, never a TypeError deep inside a command.

Only the types of the fields provision reads are checked; keys it does not know are left alone
(PEP 751 lets tools add their own, and newer provision versions add sections).

Sources: PEP 751 (https://peps.python.org/pep-0751/) for the top level, `[[packages]]`, their
`sdist`/`wheels`; docs/lock-contract.md for `[tool.provision]`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.schema import type_name

# A shape is a Python type (or a tuple of types), a dict (a table: known key -> shape; the key "*"
# is the shape of every value of a table keyed by names), or a one-item list (an array of that).
STR = str
TABLE: dict[str, Any] = {}  # a table, its content unchecked
STRINGS = [str]
TIME = (dt.datetime, dt.date, str)

FILE = {  # an sdist or a wheel
    "name": STR,
    "url": STR,
    "path": STR,
    "size": int,
    "upload-time": TIME,
    "hashes": {"*": STR},
}

PACKAGE = {
    "name": STR,
    "version": STR,
    "marker": STR,
    "requires-python": STR,
    "index": STR,
    "dependencies": [TABLE],
    "sdist": FILE,
    "wheels": [FILE],
    "archive": TABLE,
    "directory": TABLE,
    "vcs": TABLE,
    "tool": TABLE,
}

MODEL = {
    "source": STR,
    "repo_id": STR,
    "revision": STR,
    "modelscope_repo_id": STR,
    "endpoint": STR,
    "commit": STR,
    "include": STRINGS,
    "exclude": STRINGS,
    "files": [{"path": STR, "size": int, "sha256": STR, "unverified": bool}],
}

TARGET = {
    key: STR
    for key in (
        "python",
        "platform",
        "variant",
        "torch",
        "route",
        "rule",
        "reason",
        "cuda",
        "min_driver",
        "full_support_driver",
        "min_compute_capability",
        "max_compute_capability",
    )
}

INDEXES = {
    "default": STR,
    "default_from": STR,
    "extra": [{"name": STR, "url": STR, "from": STR}],
    "find_links": [{"location": STR, "from": STR}],
    "pip_config_files": STRINGS,
    "strategy": STR,
    "torch": {"url": STR, "route": STR, "format": STR, "packages": STRINGS},
}

PROVISION = {
    "tool-version": STR,
    "resolver": STR,
    "kind": STR,
    "profile": {
        "name": STR,
        "hash": STR,
        "inputs_hash": STR,
        "task": STR,
        "stack": STR,
        "builtin": bool,
    },
    "direction": {
        "name": STR,
        "description": STR,
        "hash": STR,
        "inputs_hash": STR,
        "builtin": bool,
        "python": STR,
        "packages": STRINGS,
        "members": STRINGS,
    },
    "target": TARGET,
    "indexes": INDEXES,
    "model": MODEL,
    "fixes": {"apply": STRINGS},
    "env": {"*": STR},
    "smoke": TABLE,
    "members": {
        "*": {
            "tasks": STRINGS,
            "profile_hash": STR,
            "builtin": bool,
            "fixes": STRINGS,
            "stacks": {"*": STR},
            "model": MODEL,
            "smoke": TABLE,
        }
    },
}

LOCK = {
    "lock-version": STR,
    "created-by": STR,
    "requires-python": STR,
    "environments": STRINGS,
    "extras": STRINGS,
    "dependency-groups": STRINGS,
    "default-groups": STRINGS,
    "packages": [PACKAGE],
    "tool": {"provision": PROVISION},
}


class LockShapeError(ProvisionError):
    """A lock value of the wrong type: names the file and the field."""

    def __init__(self, path: Path, key: str, want: str, got: Any) -> None:
        super().__init__(
            f"Lockfile {path}: {key} must be {want}, got {type_name(got)}.",
            "The lock was edited or written by something else: make it again with "
            "`provision lock PROFILE` (or `provision direction lock NAME`), or fix that field.",
        )
        self.path, self.key = str(path), key


def check_lock_shape(data: Any, path: Path) -> None:
    """Raise LockShapeError for the first value whose type is not the one its field needs."""
    _check(data, LOCK, path, "the lock")


def _want(shape: Any) -> str:
    if isinstance(shape, dict):
        return "a table"
    if isinstance(shape, list):
        return "a list"
    types = shape if isinstance(shape, tuple) else (shape,)
    if types == TIME:
        return "a date-time"
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(value: Any, shape: Any, path: Path, key: str) -> None:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise LockShapeError(path, key, "a table", value)
        inner = "" if key == "the lock" else f"{key}."
        for name, item in value.items():
            sub = shape.get(name, shape.get("*"))
            if sub is not None:
                _check(item, sub, path, f"{inner}{_dotted(name)}")
        return
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise LockShapeError(path, key, "a list", value)
        for i, item in enumerate(value):
            _check(item, shape[0], path, f"{key}[{i}]")
        return
    types = shape if isinstance(shape, tuple) else (shape,)
    # TOML booleans are not integers, whatever Python says.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise LockShapeError(path, key, _want(shape), value)


def _dotted(name: str) -> str:
    """A key as TOML writes it in a dotted path: quoted when it has dots or odd characters."""
    bare = name.replace("-", "").replace("_", "").isalnum()
    return name if bare else f'"{name}"'
