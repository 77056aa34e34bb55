"""The lockfile: a PEP 751 `pylock.<name>.toml` plus our `[tool.provision]` table.

The lock is a contract (docs/lock-contract.md): what uv wrote stays byte-for-byte as uv wrote it,
and the locks provision ships (the wheel's `_builtin/lockfiles`, a checkout's `lockfiles/`) are
never rewritten by a stage. What a later stage learns on this machine (the weights' commit and
hashes, the patched files' hashes, the smoke result) goes to the lock only when the user named
the lock to update (`--lock FILE`) or the lock did not exist yet; otherwise to a machine-side
record on the data disk (`<data dir>/lock-records/`), which readers see on top of the lock.
This module owns finding locks, reading them with their record, and recording atomically.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provision import __version__
from provision.atomic import atomic_write_text, file_lock
from provision.errors import ProvisionError

LOCK_DIR_ENV = "PROVISION_LOCK_DIR"


def _tomllib() -> Any:
    """The standard library's TOML reader (tomli below 3.11), imported where a lock is read, not
    when this module is (a lock's start-up, issue 17)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def lock_name(profile_name: str) -> str:
    """PEP 751 lock names have no dots: `pylock.<name>.toml`, so qwen2.5-vl-7b -> qwen2_5-vl-7b."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", profile_name)


RECORDS_DIR = "lock-records"
USER_LOCKS_DIR = "lockfiles"


def user_lock_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The user's own locks (made on this machine): `<data dir>/lockfiles`."""
    from provision.settings import resolve_data_dir

    return resolve_data_dir(data_dir) / USER_LOCKS_DIR


def explicit_lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder the user named: the flag, else PROVISION_LOCK_DIR, else None."""
    chosen = explicit or os.environ.get(LOCK_DIR_ENV)
    return Path(chosen).expanduser() if chosen else None


def lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where a new lock is written: the flag, PROVISION_LOCK_DIR, ./lockfiles when the current
    folder has one (a checkout, a project keeping its locks), else the data disk's lockfiles/.
    Never the locks an installed provision ships."""
    named = explicit_lock_dir(explicit)
    if named is not None:
        return named
    if Path("lockfiles").is_dir():
        return Path("lockfiles")
    return user_lock_dir()


def lock_candidates(file_name: str, directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where a lock named `file_name` is looked for, in order: the named folder alone when there
    is one; else ./lockfiles (a project's own locks, unless it is the checkout's shipped folder),
    the data disk's lockfiles/ (the user's own re-locks), and the locks provision ships (the
    wheel's copy, else the checkout's)."""
    from provision.resources import builtin_dir

    named = explicit_lock_dir(directory)
    if named is not None:
        return [named / file_name]
    shipped = builtin_dir("lockfiles")
    here = Path("lockfiles")
    folders = (
        [user_lock_dir(), shipped] if _same(here, shipped) else [here, user_lock_dir(), shipped]
    )
    found: list[Path] = []
    for folder in folders:
        path = folder / file_name
        if not any(_same(path, seen) for seen in found):
            found.append(path)
    return found


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - an unreadable folder on the way
        return False


def find_lock_file(file_name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The first existing lock of `lock_candidates`; where a new one would go when none is."""
    for path in lock_candidates(file_name, directory):
        if path.is_file():
            return path
    return lock_dir(directory) / file_name


def find_lock(
    profile_name: str, directory: str | os.PathLike[str] | None = None, task: str = "infer"
) -> Path:
    """A profile's lock as read by every stage: see `find_lock_file`."""
    return find_lock_file(lock_path(profile_name, ".", task).name, directory)


def is_shipped(path: str | os.PathLike[str]) -> bool:
    """Is `path` one of the locks provision ships (the wheel's or the checkout's lockfiles/)?"""
    from provision.resources import builtin_dir

    return _same(Path(path).parent, builtin_dir("lockfiles"))


def lock_path(
    profile_name: str, directory: str | os.PathLike[str] | None = None, task: str = "infer"
) -> Path:
    """`pylock.<name>.toml` for the infer task; other tasks get `pylock.<name>--<task>.toml`."""
    suffix = "" if task == "infer" else f"--{task}"
    return lock_dir(directory) / f"pylock.{lock_name(profile_name)}{suffix}.toml"


def read_lock(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole lockfile as data; a clear message when it is missing, not TOML, or has a value
    of the wrong type (provision/lock/shape.py)."""
    lock = Path(path)
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ProvisionError(
            f"Lockfile {lock} does not exist.",
            "Run `provision lock PROFILE` first, or pass the lockfile you were given.",
        ) from exc
    tomllib = _tomllib()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"Lockfile {lock} is not valid TOML ({exc}).") from exc
    from provision.lock.shape import check_lock_shape

    check_lock_shape(data, lock)  # valid TOML with a wrong type is one message, not a TypeError
    return data


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


_TOOL_HEADER = re.compile(r"^\[\[?\s*tool\s*[.\]]", re.MULTILINE)


def uv_part(text: str) -> str:
    """The lock text before its first `[tool...]` table: the header and what uv wrote."""
    match = _TOOL_HEADER.search(text)
    return text[: match.start()] if match else text


def update_lock(
    path: str | os.PathLike[str], change: Callable[[dict[str, Any]], None], create: bool = True
) -> dict[str, Any]:
    """Read the lock, let `change` edit its `[tool]` tables, write them back atomically, under a
    file lock. Everything before `[tool...]` (the header, uv's lock) is kept byte-for-byte.

    Two processes recording at once (a download and a smoke run, say) wait for each other, so
    neither loses the other's entry. A missing lock is created empty when `create` is true.
    """
    import tomli_w

    lock = Path(path)
    with file_lock(str(lock) + ".lock"):
        if lock.exists():
            data = read_lock(lock)
            head = uv_part(lock.read_text(encoding="utf-8"))
        elif create:
            data = empty_lock()
            head = dump_lock(data)
        else:
            raise ProvisionError(f"Lockfile {lock} does not exist.", "Run `provision lock` first.")
        change(data)
        data.setdefault("tool", {}).setdefault("provision", {})["tool-version"] = __version__
        tool = tomli_w.dumps({"tool": data["tool"]}, multiline_strings=False, indent=4)
        atomic_write_text(lock, head.rstrip("\n") + "\n\n" + tool)
    return data


# --- the machine-side record ---------------------------------------------------------------------


def record_file(
    lock: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """This machine's record for `lock`: `<data dir>/lock-records/<lock name>.<digest>.toml`,
    the digest over the lock's bytes (another lock, or this one re-made, gets a new record)."""
    import hashlib

    from provision.settings import resolve_data_dir

    path = Path(lock)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return resolve_data_dir(data_dir) / RECORDS_DIR / f"{path.stem}.{digest}.toml"


def recorded_table(
    lock: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """`[tool.provision]` of `lock` as this machine knows it: the record's copy when there is
    one (it starts as the lock's table and adds what was recorded here), else the lock's."""
    path = Path(lock)
    record = record_file(path, data_dir)
    if record.is_file():
        tomllib = _tomllib()
        try:
            return tool_table(tomllib.loads(record.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass  # a damaged record: the lock's own table still holds; the next record rewrites it
    return tool_table(read_lock(path))


def record(
    lock: str | os.PathLike[str],
    change: Callable[[dict[str, Any]], None],
    *,
    into_lock: bool = False,
    create: bool = True,
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Record what a stage learnt about `lock`; returns the file written.

    Into the lock itself when `into_lock` (the user named it with --lock) or when it does not
    exist yet (nobody's contract to keep); otherwise, and always for a lock provision ships (the
    wheel's, the checkout's lockfiles/), into this machine's record on the data disk, so that
    committed and shipped locks stay as they are.
    """
    path = Path(lock)
    if not path.exists() or (into_lock and not is_shipped(path)):
        before = record_file(path, data_dir) if path.exists() else None
        update_lock(path, change, create=create)
        if before is not None and before.is_file():
            # What this machine recorded for the lock's old bytes (a setup run without --lock)
            # would be orphaned by the new bytes: it goes on under them, with the same change.
            _write_record(path, record_file(path, data_dir), change, start=before)
        return path
    return _write_record(path, record_file(path, data_dir), change)


def _write_record(
    lock: Path, target: Path, change: Callable[[dict[str, Any]], None], start: Path | None = None
) -> Path:
    """Apply `change` to this machine's record (read from `start`, else `target`, else a copy of
    the lock's table) and write it to `target` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(str(target) + ".lock"):
        data: dict[str, Any] | None = None
        source = start or target
        if source.is_file():
            tomllib = _tomllib()
            try:
                data = tomllib.loads(source.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                data = None
        if data is None or not isinstance(data.get("tool", {}).get("provision"), dict):
            data = {"tool": {"provision": copy.deepcopy(tool_table(read_lock(lock)))}}
        change(data)
        header = (
            f"# What provision recorded on this machine for {lock.absolute()}\n"
            "# (the lock itself is not rewritten: docs/lock-contract.md).\n"
        )
        atomic_write_text(target, header + dump_lock({"tool": data["tool"]}))
    return target


def member_path(lock: str | os.PathLike[str], profile_name: str) -> tuple[str, ...]:
    """Where `profile_name`'s records go in `lock`: `("members", name)` in a research
    direction's lock, () in a profile's. A direction lock without that member is an error."""
    path = Path(lock)
    if not path.is_file():
        return ()
    table = tool_table(read_lock(path))
    if table.get("kind") != "direction":
        return ()
    members = table.get("direction", {}).get("members", [])
    if profile_name not in members:
        name = table.get("direction", {}).get("name", "?")
        raise ProvisionError(
            f"{path} is direction {name}'s lock; {profile_name} is not one of its members "
            f"({', '.join(members) or 'none'}).",
            "Pass that profile's own lock with --lock, or one of the direction's members.",
        )
    return ("members", profile_name)


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
