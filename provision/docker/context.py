"""The build context: a folder holding exactly what the Dockerfile copies, and nothing else.

    Dockerfile, .dockerignore   as rendered
    requirements.lock.txt       the lock's packages with their hashes (spec.requirements_text)
    pylock.toml                 the lock itself (kept in the image as its record)
    image.json                  what the image's smoke entry point runs
    weights.json                with --bake-weights: the model files to download and check
    wheels/                     local files for the lock's packages: those the lock names by path
                                or file:// URL (the engine cannot see this machine's folders) and
                                those found by name in --wheelhouse, each checked against the
                                lock's sha256
    provision/                  provision's own code the image runs: the fix engine (build time)
                                and the smoke runner (run time); standard library + the env only

Files are hard-linked where the file system allows (a CUDA torch wheel is 2 GB), else copied.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.digest import file_sha256
from provision.errors import ProvisionError
from provision.resources import PACKAGE_DIR

MARKER = ".provision-context"
# provision's files that go into the image: what image_fixes, image_weights and image_smoke import.
RUNTIME_FILES = (
    "__init__.py",
    "errors.py",
    "atomic.py",
    "patches/*.py",
    "smoke/**/*",
    "docker/__init__.py",
    "docker/image_fixes.py",
    "docker/image_weights.py",
    "docker/image_smoke.py",
)


@dataclass
class StagedContext:
    path: Path
    wheels: list[str] = field(default_factory=list)  # file names placed in wheels/
    uncovered: list[str] = field(default_factory=list)  # "name==version" with no local file
    skipped: list[str] = field(default_factory=list)  # local files whose hash is not the lock's
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "wheels": list(self.wheels),
            "uncovered": list(self.uncovered),
            "skipped": list(self.skipped),
            "bytes": self.bytes,
        }


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _fresh(path: Path) -> None:
    """Empty `path` for staging, refusing to clear a folder provision did not make."""
    if path.exists():
        if not path.is_dir():
            raise ProvisionError(
                f"Build context {path} is a file.", "Pass --context with a folder path."
            )
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise ProvisionError(
                f"Build context {path} is not empty and was not made by provision.",
                "Pass --context with an empty or new folder; provision clears only its own.",
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by `provision docker`; cleared on the next build\n")


def runtime_sources() -> list[Path]:
    """provision's files the image needs, relative to the package folder."""
    out: set[Path] = set()
    for pattern in RUNTIME_FILES:
        for path in PACKAGE_DIR.glob(pattern):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.add(path.relative_to(PACKAGE_DIR))
    return sorted(out)


def stage_context(
    dest: Path,
    spec: Any,
    dockerfile: str,
    dockerignore: str,
    image_meta: dict[str, Any],
    wheelhouses: list[Path] | None = None,
    bake_weights: bool = False,
    fetch_missing: bool = False,
) -> StagedContext:
    """Write the build context for `spec` (an ImageSpec) into `dest`."""
    _fresh(dest)
    staged = StagedContext(dest)
    (dest / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    (dest / ".dockerignore").write_text(dockerignore, encoding="utf-8")
    (dest / "requirements.lock.txt").write_text(spec.requirements_text(), encoding="utf-8")
    shutil.copyfile(spec.lock_file, dest / "pylock.toml")
    (dest / "image.json").write_text(
        json.dumps(image_meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    if bake_weights:
        (dest / "weights.json").write_text(
            json.dumps(spec.weights_manifest(), indent=2) + "\n", encoding="utf-8"
        )
    for rel in runtime_sources():
        _place(PACKAGE_DIR / rel, dest / "provision" / rel)

    wheels = dest / "wheels"
    wheels.mkdir()
    (wheels / "README").write_text(
        "Local files for the lock's packages (uv's find-links); each one's sha256 is in the lock.\n"
    )
    by_name: dict[str, list[Path]] = {}
    for folder in wheelhouses or []:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ProvisionError(
                f"Wheelhouse {folder} is not a folder.",
                "Pass --wheelhouse with the folder holding the .whl files.",
            )
        for item in sorted(folder.iterdir()):
            if item.is_file():
                by_name.setdefault(item.name, []).append(item)
    for package in spec.packages:
        covered = any((wheels / a.filename).exists() for a in package.artifacts)
        for artifact in () if covered else package.artifacts:
            candidates = [artifact.local_file, *by_name.get(artifact.filename, [])]
            for candidate in candidates:
                if candidate is None or not candidate.is_file():
                    continue
                if file_sha256(candidate) != artifact.sha256:
                    staged.skipped.append(str(candidate))
                    continue
                target = wheels / artifact.filename
                if not target.exists():
                    _place(candidate, target)
                    staged.wheels.append(artifact.filename)
                    staged.bytes += target.stat().st_size
                covered = True
                break
        if not covered:
            staged.uncovered.append(f"{package.name}=={package.version}")
    if fetch_missing and staged.uncovered:
        # Only what the wheelhouses and this machine's files did not cover is fetched: a private
        # index the engine cannot reach is served from --wheelhouse alone.
        from provision.docker.wheelhouse import fill

        missing = set(staged.uncovered)
        for name in fill(spec, wheels, only=missing):
            staged.wheels.append(name)
            staged.bytes += (wheels / name).stat().st_size
        staged.uncovered = []
    return staged


def git_revision(where: Path | None = None) -> str:
    """The source revision for the image's label: `git rev-parse HEAD` (+ -dirty), or unknown."""
    import subprocess

    cwd = str(where or Path.cwd())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
