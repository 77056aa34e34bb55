"""What an image is made from, read out of a profile's lockfile (and the profile's smoke settings).

The Dockerfile needs from the lock: the packages with their hashes, the target (Python, platform,
torch variant), the indexes they came from (defaults for the mirror build arguments), the fixes to
apply, the model's repository, commit and file hashes (to bake weights), and the non-secret
environment. Everything else a stage records (smoke results, patched-file hashes) is left out of
what the image depends on, so recording a result does not rebuild the packages.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from provision.errors import ProvisionError
from provision.lock.lockfile import find_lock, read_lock, recorded_table, tool_table
from provision.settings import public_env

PYPI_SIMPLE = "https://pypi.org/simple"
HF_ENDPOINT = "https://huggingface.co"
# Hub settings the image sets itself; a host's values (its data disk paths) must not leak in.
HUB_ENV = re.compile(r"^(HF_|HUGGINGFACE_|MODELSCOPE_|TRANSFORMERS_CACHE$)")


@dataclass(frozen=True)
class Artifact:
    """One file of a locked package: a wheel or an sdist, with where the lock says it lives."""

    filename: str
    sha256: str
    url: str | None
    path: str | None

    @property
    def local_file(self) -> Path | None:
        """The file on this machine when the lock points at one (file:// URL or a path)."""
        if self.url and self.url.startswith("file:"):
            return Path(unquote(urlparse(self.url).path))
        if self.path:
            return Path(self.path)
        return None


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    marker: str | None
    artifacts: tuple[Artifact, ...]

    def requirement_line(self) -> str:
        """`name==version ; marker --hash=sha256:...` for every artifact the lock allows."""
        line = f"{self.name}=={self.version}"
        if self.marker:
            line += f" ; {self.marker}"
        hashes = sorted({a.sha256 for a in self.artifacts})
        return " \\\n    ".join([line, *(f"--hash=sha256:{h}" for h in hashes)])


@dataclass
class ImageSpec:
    profile: str
    task: str
    lock_file: Path
    lock_sha256: str
    python: str
    platform: str
    variant: str | None
    target: dict[str, Any]
    packages: list[LockedPackage]
    pypi_index: str
    torch_index: str | None
    torch_index_format: str
    fixes: list[str]
    model: dict[str, Any]
    build_env: dict[str, str]
    smoke: dict[str, Any] = field(default_factory=dict)
    gated: bool = False
    trust_remote_code: bool = False
    backend: str = "transformers"  # the smoke's backend: the infer stack if it is a serving one

    @property
    def short_hash(self) -> str:
        return self.lock_sha256[:12]

    @property
    def model_commit(self) -> str | None:
        return self.model.get("commit")

    def requirements_text(self) -> str:
        """The lock's packages as a hash-pinned requirements file (what the image installs).

        uv installs a pylock.toml only from the URLs written in it, so a mirror or a wheelhouse
        could not stand in; the same pins and hashes as requirements let uv take each file from
        whichever index or folder has it and still refuse any file whose hash is not the lock's.
        """
        # Nothing here may change unless a package does (no lock hash, no date): this file is
        # what the package layer's cache depends on.
        header = (
            f"# Every package of {self.lock_file.name}, pinned with the lock's hashes. Written\n"
            "# by `provision docker`; installed with `uv pip sync --require-hashes`, which\n"
            "# refuses any file whose hash differs.\n"
        )
        lines = [p.requirement_line() for p in sorted(self.packages, key=lambda p: p.name)]
        return header + "\n".join(lines) + "\n"

    def weights_manifest(self) -> dict[str, Any]:
        """What a baked image downloads and checks: repository, commit, every file's sha256."""
        return {
            "repo_id": self.model["repo_id"],
            "revision": self.model.get("revision") or "main",
            "commit": self.model["commit"],
            "files": [
                {"path": f["path"], "size": f["size"], "sha256": f["sha256"]}
                for f in self.model["files"]
            ],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "task": self.task,
            "lock_file": str(self.lock_file),
            "lock_sha256": self.lock_sha256,
            "python": self.python,
            "platform": self.platform,
            "variant": self.variant,
            "packages": len(self.packages),
            "pypi_index": self.pypi_index,
            "torch_index": self.torch_index,
            "fixes": list(self.fixes),
            "model": {k: v for k, v in self.model.items() if k != "files"},
        }


def _artifacts(pkg: dict[str, Any], lock_file: Path) -> tuple[Artifact, ...]:
    entries = list(pkg.get("wheels") or [])
    for key in ("sdist", "archive"):
        if isinstance(pkg.get(key), dict):
            entries.append(pkg[key])
    out = []
    for entry in entries:
        sha = (entry.get("hashes") or {}).get("sha256")
        url, path = entry.get("url"), entry.get("path")
        where = url or path or ""
        filename = entry.get("name") or unquote(Path(urlparse(str(where)).path).name)
        if not sha or not filename:
            raise ProvisionError(
                f"Lock {lock_file}: package {pkg.get('name')} has a file without a sha256 "
                f"({where or 'no location'}).",
                "An image installs only hash-checked files: lock again with `provision lock`.",
            )
        if path and not Path(path).is_absolute():
            path = str((lock_file.parent / path).resolve())
        out.append(Artifact(filename, sha, url, path))
    if not out:
        kind = next((k for k in ("vcs", "directory") if k in pkg), "no file")
        raise ProvisionError(
            f"Lock {lock_file}: package {pkg.get('name')} is locked from a {kind}, not a wheel "
            "or an sdist with a hash.",
            "Images install only hash-checked files from an index or a wheelhouse.",
        )
    return tuple(out)


def _public(url: str | None) -> str | None:
    """Drop credentials from an index URL: they would end up in the Dockerfile."""
    from provision.lock.resolve import strip_credentials

    return strip_credentials(url)[0] if url else None


def _remote(url: str | None) -> str | None:
    """An index the build can reach: http(s) only (file:// indexes are on this machine)."""
    url = _public(url)
    return url if url and url.startswith(("http://", "https://")) else None


def load_spec(
    profile: str,
    lock_file: str | os.PathLike[str] | None = None,
    task: str = "infer",
    profiles_dir: str | os.PathLike[str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    records: bool = False,
) -> ImageSpec:
    """Read `profile`'s lock (default: find_lock(profile, task)) into an ImageSpec; with
    `records`, what this machine recorded for it too (the weights' commit and hashes)."""
    path = Path(lock_file) if lock_file else find_lock(profile, lock_dir, task)
    if not path.exists():
        raise ProvisionError(
            f"No lockfile for {profile} at {path}.",
            f"Run `provision lock {profile}` first (or pass --lock FILE).",
        )
    raw = path.read_bytes()
    data = read_lock(path)
    table = recorded_table(path) if records else tool_table(data)
    recorded = table.get("profile", {}).get("name")
    if recorded and recorded != profile:
        raise ProvisionError(
            f"Lock {path} was made for profile {recorded!r}, not {profile!r}.",
            f"Pass the lock of {profile}, or build {recorded}.",
        )
    target = dict(table.get("target") or {})
    python = str(target.get("python") or "")
    if not re.fullmatch(r"3\.[0-9]+", python):
        raise ProvisionError(
            f"Lock {path} records no target Python ([tool.provision.target] python).",
            f"Lock again with `provision lock {profile}`.",
        )
    packages = [
        LockedPackage(
            name=str(p["name"]),
            version=str(p["version"]),
            marker=p.get("marker"),
            artifacts=_artifacts(p, path),
        )
        for p in data.get("packages", [])
    ]
    if not packages:
        raise ProvisionError(f"Lock {path} locks no packages.", f"Run `provision lock {profile}`.")
    indexes = table.get("indexes") or {}
    torch = indexes.get("torch") or {}
    torch_index = _remote(torch.get("url")) if torch.get("route") != "pypi" else None
    pypi = _remote(indexes.get("default")) or PYPI_SIMPLE
    fixes = table.get("fixes") or {}
    env = {
        str(k): str(v)
        for k, v in public_env(table.get("env") or {}).items()
        if not HUB_ENV.match(str(k))
    }
    spec = ImageSpec(
        profile=profile,
        task=str(table.get("profile", {}).get("task") or task),
        lock_file=path,
        lock_sha256=hashlib.sha256(raw).hexdigest(),
        python=python,
        platform=str(target.get("platform") or ""),
        variant=target.get("variant"),
        target=target,
        packages=packages,
        pypi_index=pypi,
        torch_index=torch_index if torch_index != pypi else None,
        torch_index_format=str(torch.get("format") or "simple"),
        fixes=[str(f) for f in (fixes.get("apply") or [])],
        model=dict(table.get("model") or {}),
        build_env=env,
    )
    _from_profile(spec, profiles_dir)
    return spec


def _from_profile(spec: ImageSpec, profiles_dir: str | os.PathLike[str] | None) -> None:
    """The profile's [smoke] table and whether its model is gated (when the profile is here:
    a lock handed over without its profile still builds, with the default smoke question)."""
    from provision.profiles import load_profile

    try:
        profile = load_profile(spec.profile, profiles_dir)
    except ProvisionError:
        return
    spec.smoke = dict(profile.smoke)
    spec.gated = profile.gated
    spec.trust_remote_code = profile.trust_remote_code
    try:
        stack = profile.task(spec.task).stack
    except ProvisionError:
        stack = "transformers"
    from provision.smoke.run import SERVING_STACKS

    spec.backend = stack if stack in SERVING_STACKS else "transformers"  # as the smoke picks
