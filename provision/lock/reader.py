"""Reading a lock for the stages after `lock`: what it targets, what it pins, how to install it.

Light on purpose (tomllib only): `provision setup`, `env` and `docker` read locks often.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.lock.lockfile import read_lock, tool_table
from provision.lock.resolve import canonical


@dataclass(frozen=True)
class LockedDist:
    name: str
    version: str
    sdist_only: bool

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class LockInfo:
    path: Path
    profile: str | None
    task: str | None
    target: dict[str, Any]
    indexes: dict[str, Any]
    model: dict[str, Any]
    env: dict[str, str]
    packages: list[LockedDist] = field(default_factory=list)

    @property
    def python(self) -> str | None:
        return self.target.get("python")

    @property
    def variant(self) -> str | None:
        return self.target.get("variant")

    def version_of(self, name: str) -> str | None:
        key = canonical(name)
        for dist in self.packages:
            if dist.name == key:
                return dist.version
        return None

    def requirements(self) -> list[str]:
        """`name==version` for every locked package: a requirement set for a joint resolution."""
        return [d.requirement for d in self.packages]

    def install_command(self, uv: str, python: str | os.PathLike[str]) -> list[str]:
        """The `uv pip sync` that `provision setup` runs: installs exactly the lock (hashes
        checked), removing anything else. Run it with `self.env` added to the environment."""
        from provision.uv import SYNC_ARGS

        return [uv, *SYNC_ARGS, "--python", str(python), str(self.path)]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "profile": self.profile,
            "task": self.task,
            "target": self.target,
            "indexes": self.indexes,
            "model": self.model,
            "env": self.env,
            "packages": [{"name": d.name, "version": d.version} for d in self.packages],
        }


def lock_info(path: str | os.PathLike[str]) -> LockInfo:
    """A lock's target, packages and [tool.provision] tables; one message if it is not a lock."""
    data = read_lock(path)
    if data.get("lock-version") != "1.0" or not isinstance(data.get("packages"), list):
        raise ProvisionError(
            f"{path} is not a PEP 751 lock (lock-version 1.0 with [[packages]]).",
            "Make one with `provision lock PROFILE`.",
        )
    table = tool_table(data)
    packages = [
        LockedDist(
            canonical(p["name"]),
            str(p.get("version", "")),
            not p.get("wheels") and bool(p.get("sdist")),
        )
        for p in data["packages"]
    ]
    profile = table.get("profile", {})
    return LockInfo(
        path=Path(path),
        profile=profile.get("name"),
        task=profile.get("task"),
        target=dict(table.get("target", {})),
        indexes=dict(table.get("indexes", {})),
        model=dict(table.get("model", {})),
        env={str(k): str(v) for k, v in table.get("env", {}).items()},
        packages=packages,
    )
