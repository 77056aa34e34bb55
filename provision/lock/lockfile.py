"""The lockfile: a PEP 751 `pylock.<name>.toml` plus our `[tool.provision]` table.

Every stage after `lock` reads and records into the same file (the weights' commit and hashes, the
patched files' hashes, the smoke results), so this module owns reading it, finding it, and updating
the tool table atomically under a file lock.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provision import __version__
from provision.atomic import atomic_write_text, file_lock
from provision.errors import ProvisionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK_DIR_ENV = "PROVISION_LOCK_DIR"


def lock_name(profile_name: str) -> str:
    """PEP 751 lock names have no dots: `pylock.<name>.toml`, so qwen2.5-vl-7b -> qwen2_5-vl-7b."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", profile_name)


def lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where lockfiles go: the flag, PROVISION_LOCK_DIR, else ./lockfiles."""
    chosen = explicit or os.environ.get(LOCK_DIR_ENV) or "lockfiles"
    return Path(chosen).expanduser()


def lock_path(
    profile_name: str, directory: str | os.PathLike[str] | None = None, task: str = "infer"
) -> Path:
    """`pylock.<name>.toml` for the infer task; other tasks get `pylock.<name>--<task>.toml`."""
    suffix = "" if task == "infer" else f"--{task}"
    return lock_dir(directory) / f"pylock.{lock_name(profile_name)}{suffix}.toml"


def read_lock(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole lockfile as data; a clear message when it is missing or not TOML."""
    lock = Path(path)
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ProvisionError(
            f"Lockfile {lock} does not exist.",
            "Run `provision lock PROFILE` first, or pass the lockfile you were given.",
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"Lockfile {lock} is not valid TOML ({exc}).") from exc


def tool_table(data: dict[str, Any]) -> dict[str, Any]:
    return data.get("tool", {}).get("provision", {})


def empty_lock() -> dict[str, Any]:
    """A valid PEP 751 lock with no packages yet: stages before `lock` can still record into it."""
    return {"lock-version": "1.0", "created-by": "provision", "packages": []}


def dump_lock(data: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(data, multiline_strings=False, indent=4)


def write_lock(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    atomic_write_text(path, dump_lock(data))


def update_lock(
    path: str | os.PathLike[str], change: Callable[[dict[str, Any]], None], create: bool = True
) -> dict[str, Any]:
    """Read the lock, let `change` edit it in place, write it back atomically, under a file lock.

    Two processes recording at once (a download and a smoke run, say) wait for each other, so
    neither loses the other's entry. A missing lock is created empty when `create` is true.
    """
    lock = Path(path)
    with file_lock(str(lock) + ".lock"):
        if lock.exists():
            data = read_lock(lock)
        elif create:
            data = empty_lock()
        else:
            raise ProvisionError(f"Lockfile {lock} does not exist.", "Run `provision lock` first.")
        change(data)
        data.setdefault("tool", {}).setdefault("provision", {})["tool-version"] = __version__
        write_lock(lock, data)
    return data


def set_tool_section(path: str | os.PathLike[str], section: str, value: Any) -> dict[str, Any]:
    """Replace `[tool.provision.<section>]` (dotted for deeper tables) with `value`."""

    def change(data: dict[str, Any]) -> None:
        table = data.setdefault("tool", {}).setdefault("provision", {})
        *parents, leaf = section.split(".")
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value

    return update_lock(path, change)


def check_lock_name(path: Path) -> None:
    """PEP 751 names only, checked before minutes of resolving rather than after."""
    if path.name != "pylock.toml" and not re.fullmatch(r"pylock\.[^.]+\.toml", path.name):
        raise ProvisionError(
            f"Lock file name {path.name!r} is not a PEP 751 name.",
            "Name it pylock.toml or pylock.<name>.toml, where <name> has no dots.",
        )
