"""The environment registry (`<data dir>/envs/registry.json`): which environments exist, what
made them (a direction, a profile's setup, its lock), who set them up or uses them, and when.
Written atomically under a file lock, so two setups finishing at once both land.

Per-profile setup and directions both record here; this module imports neither.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text, file_lock
from provision.errors import ProvisionError

USER_ENV = "PROVISION_USER"
REGISTRY_VERSION = 1


def current_user() -> str:
    """Who is running: PROVISION_USER (people sharing one login, e.g. root on a rented box, name
    themselves), else the login name."""
    named = os.environ.get(USER_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return f"uid{os.getuid()}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- the registry ---------------------------------------------------------------------------------


def registry_path(data_dir: str | os.PathLike[str] | None = None) -> Path:
    from provision.settings import resolve_data_dir

    return resolve_data_dir(data_dir) / "envs" / "registry.json"


class RegistryDamaged(ProvisionError):
    """The registry file is there but is not a registry (cut short, edited, another format)."""


def read_registry(path: Path) -> dict[str, Any]:
    """The registry's data; an absent file is an empty registry. A damaged one raises
    RegistryDamaged (`load_registry` repairs it); an unreadable one is one message."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _empty()
    except UnicodeDecodeError as exc:
        raise RegistryDamaged(f"The environment registry {path} is damaged ({exc}).") from exc
    except OSError as exc:
        raise ProvisionError(f"Cannot read the registry {path}: {exc.strerror}.") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("environments"), dict):
            raise ValueError("no environments table")
        if not all(isinstance(v, dict) for v in data["environments"].values()):
            raise ValueError("an entry that is not an object")
    except ValueError as exc:
        raise RegistryDamaged(
            f"The environment registry {path} is damaged ({exc}).",
            "Move it aside; the next `provision setup` starts a new one.",
        ) from exc
    return data


def _empty() -> dict[str, Any]:
    return {"version": REGISTRY_VERSION, "environments": {}}


def load_registry(path: Path, notes: list[str]) -> dict[str, Any]:
    """The registry's data, repairing a damaged file: it is moved aside whole (to
    `registry.json.damaged-<time>`, nothing is lost), a note saying so goes into `notes`, and
    the registry starts empty (the next record writes a new one). The caller holds the file lock.
    """
    try:
        return read_registry(path)
    except RegistryDamaged as exc:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        n = 1
        while aside.exists():  # two repairs within a second keep both copies
            n += 1
            aside = aside.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{n}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # repaired by another process between the read and now
            return read_registry(path)
        except OSError as move:
            raise ProvisionError(
                f"{exc.message} It could not be moved aside: {move.strerror}.",
                f"Move {path} aside yourself; the next setup starts a new one.",
            ) from move
        notes.append(
            f"{exc.message} It was moved to {aside} and a new registry started; the environments "
            "it listed are still on disk (re-run their setup to list them again)."
        )
        return _empty()


@dataclass
class EnvEntry:
    """One environment in the registry."""

    path: Path
    kind: str  # "direction" (or "profile", for other callers)
    name: str
    lock: str | None
    members: list[str]
    created: str
    created_by: str
    updated: str
    status: str  # "setting up", "ok", "failed: <stage>"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what recording it repaired (not stored)

    @property
    def exists(self) -> bool:
        return (self.path / "pyvenv.cfg").is_file()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exists": self.exists,
            "kind": self.kind,
            "name": self.name,
            "lock": self.lock,
            "members": self.members,
            "created": self.created,
            "created_by": self.created_by,
            "updated": self.updated,
            "status": self.status,
            "users": self.users,
            **self.extra,
        }

    @classmethod
    def from_data(cls, path: str, data: dict[str, Any]) -> EnvEntry:
        known = ("kind", "name", "lock", "members", "created", "created_by", "updated", "status")
        return cls(
            path=Path(path),
            kind=str(data.get("kind", "")),
            name=str(data.get("name", "")),
            lock=data.get("lock"),
            members=list(data.get("members", [])),
            created=str(data.get("created", "")),
            created_by=str(data.get("created_by", "")),
            updated=str(data.get("updated", "")),
            status=str(data.get("status", "")),
            users=dict(data.get("users", {})),
            extra={k: v for k, v in data.items() if k not in (*known, "users")},
        )


def record_use(
    registry: Path,
    env: Path,
    *,
    kind: str,
    name: str,
    status: str,
    lock: Path | None = None,
    members: list[str] | None = None,
    user: str | None = None,
    extra: dict[str, Any] | None = None,
) -> EnvEntry:
    """Record that `user` set up (or is setting up) `env` for `name`; returns the entry.

    Read, change and write happen under the registry's file lock, and the write is atomic, so
    concurrent setups (other directions, other people) never lose each other's entries.
    """
    user = user or current_user()
    key = str(Path(env).absolute())
    notes: list[str] = []
    with file_lock(str(registry) + ".lock"):
        data = load_registry(registry, notes)
        entry = data["environments"].get(key) or {"created": _now(), "created_by": user}
        entry.update(
            kind=kind,
            name=name,
            status=status,
            updated=_now(),
            members=list(members or entry.get("members", [])),
        )
        if lock is not None:
            entry["lock"] = str(Path(lock).absolute())
        if extra:
            entry.update(extra)
        users = entry.setdefault("users", {})
        mine = users.setdefault(user, {"first": _now(), "setups": 0, "directions": []})
        mine["last"] = _now()
        mine["status"] = status
        if status != "setting up":
            mine["setups"] = int(mine.get("setups", 0)) + 1
        if kind == "direction" and name not in mine["directions"]:
            mine["directions"].append(name)
        data["environments"][key] = entry
        data["version"] = REGISTRY_VERSION
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        # Everyone on the machine records here: the file stays group-writable.
        mode = None if registry.exists() else 0o664
        atomic_write_text(registry, text, mode=mode)
    recorded = EnvEntry.from_data(key, entry)
    recorded.notes = notes
    return recorded


def try_record_use(registry: Path, env: Path, **kwargs: Any) -> tuple[EnvEntry | None, list[str]]:
    """`record_use` for callers whose own outcome matters more than the registry (a setup that
    succeeded, a stage's real error): the entry and the notes, or no entry and a note saying why
    it could not be recorded. Never raises a ProvisionError or an OSError."""
    try:
        entry = record_use(registry, env, **kwargs)
    except ProvisionError as exc:
        return None, [f"Not recorded in the environment registry: {exc.message}"]
    except OSError as exc:
        where = exc.filename or registry
        return None, [f"Not recorded in the environment registry: {where}: {exc.strerror}."]
    return entry, entry.notes


def registered(registry: Path, notes: list[str] | None = None) -> list[EnvEntry]:
    """Every environment the registry knows, newest first (`exists` says if it is still there).
    A damaged registry is repaired (see `load_registry`); the note goes into `notes`."""
    try:
        data = read_registry(registry)
    except RegistryDamaged:
        with file_lock(str(registry) + ".lock"):
            data = load_registry(registry, notes if notes is not None else [])
    entries = [EnvEntry.from_data(k, v) for k, v in data["environments"].items()]
    return sorted(entries, key=lambda e: e.updated, reverse=True)
