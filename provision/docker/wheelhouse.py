"""Files of a lock fetched on this machine, so an image can be built with no network at all.

`provision docker PROFILE --build --offline` puts every package file the image installs into the
build context's wheels/ folder: this machine (which could lock, so it reaches the indexes) fetches
them once, checks each against the lock's sha256, and keeps them in a shared cache
(~/.cache/provision/wheels, PROVISION_WHEEL_CACHE) keyed by hash; the build then installs from
wheels/ alone, with the engine's network switched off.

For each package the one file the target installs is chosen: the best wheel for the lock's Python
and platform (by the wheel's tags, ranked as an installer ranks them), else its sdist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.atomic import file_lock
from provision.digest import file_sha256
from provision.errors import ProvisionError

CACHE_ENV = "PROVISION_WHEEL_CACHE"


def cache_dir() -> Path:
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "provision" / "wheels"


def target_tags(python: str, platform: str) -> list[Any]:
    """Wheel tags a CPython `python` on `platform` (uv's names: x86_64-manylinux_2_28) accepts,
    best first."""
    from packaging import tags

    major, minor = (int(p) for p in python.split(".")[:2])
    arch, _, family = platform.partition("-")
    arch = arch or "x86_64"
    platforms: list[str] = []
    if family.startswith("manylinux"):
        glibc = family.removeprefix("manylinux").lstrip("_").split("_")
        top = int(glibc[1]) if len(glibc) == 2 and glibc[1].isdigit() else 17
        for glibc_minor in range(top, 4, -1):
            platforms.append(f"manylinux_2_{glibc_minor}_{arch}")
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(glibc_minor)
            if legacy:
                platforms.append(f"{legacy}_{arch}")
    elif family.startswith("musllinux"):
        musl = family.removeprefix("musllinux").lstrip("_").split("_")
        top = int(musl[1]) if len(musl) == 2 and musl[1].isdigit() else 1
        platforms += [f"musllinux_1_{m}_{arch}" for m in range(top, -1, -1)]
    platforms.append(f"linux_{arch}")
    version = (major, minor)
    return [
        *tags.cpython_tags(version, platforms=platforms),
        *tags.compatible_tags(version, platforms=platforms),
    ]


@dataclass(frozen=True)
class Wanted:
    package: str
    version: str
    filename: str
    sha256: str
    url: str | None
    local: Path | None


def choose_files(spec: Any) -> list[Wanted]:
    """For each locked package of `spec` (an ImageSpec), the file the target installs."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    accepted = target_tags(spec.python, spec.platform or "x86_64-manylinux_2_28")
    rank = {tag: i for i, tag in enumerate(accepted)}
    out = []
    for package in spec.packages:
        best: tuple[int, Any] | None = None
        sdist = None
        for artifact in package.artifacts:
            if not artifact.filename.endswith(".whl"):
                sdist = artifact
                continue
            try:
                _, _, _, wheel_tags = parse_wheel_filename(artifact.filename)
            except InvalidWheelFilename:
                continue
            score = min((rank[t] for t in wheel_tags if t in rank), default=None)
            if score is not None and (best is None or score < best[0]):
                best = (score, artifact)
        chosen = best[1] if best else sdist
        if chosen is None:
            raise ProvisionError(
                f"The lock has no file of {package.name} {package.version} for Python "
                f"{spec.python} on {spec.platform}.",
                "Lock again for the image's target (`provision lock PROFILE`).",
            )
        out.append(
            Wanted(
                package.name,
                package.version,
                chosen.filename,
                chosen.sha256,
                chosen.url,
                chosen.local_file,
            )
        )
    return out


def fetch(wanted: Wanted, cache: Path | None = None, timeout: float = 120) -> Path:
    """The file, from the cache, from this machine, or downloaded; always hash-checked."""
    cache = cache or cache_dir()
    target = cache / wanted.sha256[:2] / wanted.sha256 / wanted.filename
    if target.exists() and file_sha256(target) == wanted.sha256:
        return target
    if wanted.local is not None and wanted.local.is_file():
        if file_sha256(wanted.local) != wanted.sha256:
            raise ProvisionError(
                f"{wanted.local} does not match the lock's sha256 for {wanted.package} "
                f"{wanted.version}.",
                "The file changed since the lock was made: lock again, or restore the file.",
            )
        return wanted.local
    if not wanted.url or not wanted.url.startswith(("http://", "https://")):
        raise ProvisionError(
            f"{wanted.filename} ({wanted.package} {wanted.version}) is neither on this machine "
            "nor at a URL it can fetch.",
            "Put the file in a folder and pass --wheelhouse DIR.",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(str(target) + ".lock"):
        if target.exists() and file_sha256(target) == wanted.sha256:
            return target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            digest = hashlib.sha256()
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(  # noqa: S310 - http(s) only
                    wanted.url, timeout=timeout
                ) as response,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != wanted.sha256:
                raise ProvisionError(
                    f"{wanted.url} sent a file whose sha256 is not the lock's "
                    f"({digest.hexdigest()[:16]}... vs {wanted.sha256[:16]}...).",
                    "The index or a proxy changed the file; nothing was kept. Try again or "
                    "use another index.",
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared and read-only
            os.replace(tmp, target)
        except OSError as exc:
            raise ProvisionError(
                f"Could not fetch {wanted.filename} from {wanted.url}: {exc}",
                "Check this machine reaches the index, or pass --wheelhouse DIR with the file.",
            ) from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def fill(
    spec: Any, dest: Path, cache: Path | None = None, only: set[str] | None = None
) -> list[str]:
    """Put the target's file of every locked package (or of those `only` names as NAME==VERSION)
    into `dest`; return the file names."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for wanted in choose_files(spec):
        if only is not None and f"{wanted.package}=={wanted.version}" not in only:
            continue
        source = fetch(wanted, cache)
        target = dest / wanted.filename
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        names.append(wanted.filename)
    return names
