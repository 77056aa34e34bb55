"""Fixtures for direction tests: private folders for profiles, directions, locks and the data
disk, so nothing reads or writes the user's own (or the built-in lockfiles)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tinymodels import pycache_dir


@dataclass
class Dirs:
    root: Path
    profiles: Path
    directions: Path
    locks: Path
    data: Path

    def env(self) -> dict[str, str]:
        return {
            "PROVISION_PROFILES_DIR": str(self.profiles),
            "PROVISION_DIRECTIONS_DIR": str(self.directions),
            "PROVISION_LOCK_DIR": str(self.locks),
            "PROVISION_DATA_DIR": str(self.data),
        }


def make_dirs(root: Path) -> Dirs:
    dirs = Dirs(root, root / "profiles", root / "directions", root / "locks", root / "data")
    for folder in (dirs.profiles, dirs.directions, dirs.locks, dirs.data):
        folder.mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dirs:
    made = make_dirs(tmp_path)
    for key, value in made.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PROVISION_USER", raising=False)
    return made


@pytest.fixture(autouse=True)
def _no_leaked_hub_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare_shared sets HF_HUB_DISABLE_SYMLINKS in this process on a cache without symlinks;
    # undone after each test, so later tests (the hub's) see the machine as it is. setenv first:
    # delenv of an unset name records nothing, and what the test then sets would stay.
    for name in ("HF_HUB_DISABLE_SYMLINKS", "HF_HUB_DISABLE_SYMLINKS_WARNING"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _child_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine sets PYTHONDONTWRITEBYTECODE; without a bytecode cache every child Python
    # (smokes, model builders) recompiles torch and transformers. Kept outside the envs.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(pycache_dir()))


@dataclass
class TinyPair:
    """Two tiny profiles and the direction `tiny-pair` holding them, locked once per session."""

    dirs: Dirs
    lock: Path
    payload: dict  # `provision --json direction lock` output
    seconds: float  # wall time of that command

    def copy_into(self, target: Dirs) -> None:
        """Its profiles, direction and lock into another test's folders (to change them)."""
        import shutil

        for name in ("tiny-qwen", "tiny-llava"):
            shutil.copy(self.dirs.profiles / f"{name}.toml", target.profiles)
        shutil.copy(self.dirs.directions / "tiny-pair.toml", target.directions)
        shutil.copy(self.lock, target.locks)


PAIR_MEMBERS = {
    # profile -> (hub repo, tiny model kind, what it adds to the shared packages)
    "tiny-qwen": ("tiny-org/dir-qwen2-vl", "qwen2_vl", []),
    "tiny-llava": ("tiny-org/dir-llava", "llava", ["accelerate>=1.3"]),
}


def write_tiny_pair(dirs: Dirs) -> None:
    from tests.directions.helpers import TINY, write_direction, write_profile

    for name, (repo, _kind, extra) in PAIR_MEMBERS.items():
        write_profile(dirs.profiles, name, repo, infer=[*TINY, *extra])
    members = [(name, ["infer"]) for name in PAIR_MEMBERS]
    write_direction(dirs.directions, "tiny-pair", members, packages=["einops==0.8.1"])


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    """`provision direction lock tiny-pair` run for real: torch 2.13.0+cpu from the local wheel
    folder, the rest from PyPI and the machine's indexes."""
    import time

    from tests.cli_helpers import result_of, run_cli
    from tests.directions.helpers import lock_args

    dirs = make_dirs(tmp_path_factory.mktemp("tiny-pair"))
    write_tiny_pair(dirs)
    started = time.perf_counter()
    proc = run_cli("--json", "direction", "lock", "tiny-pair", *lock_args(), env=dirs.env(),
                   timeout=900)  # fmt: skip
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = dirs.locks / "pylock.direction-tiny-pair.toml"
    return TinyPair(dirs, lock, result_of(proc), seconds)


# --- a file system without symlinks -------------------------------------------------------------
EXFAT_TOOLS = ("mkfs.exfat", "mount.exfat-fuse", "losetup", "umount")


@pytest.fixture(scope="session")
def exfat_dir(tmp_path_factory: pytest.TempPathFactory):
    """A real exFAT file system (FUSE, on a loop device): os.symlink fails there (ENOSYS), as on
    the FAT/exFAT disks and some network mounts rented boxes have. Needs root, /dev/fuse and
    Debian's exfat-fuse + exfatprogs (.ci/run installs them); fails, never skips, without."""
    import shutil
    import subprocess

    missing = [tool for tool in EXFAT_TOOLS if shutil.which(tool) is None]
    if missing or os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.fail(
            f"The exFAT tests need root, /dev/fuse and {', '.join(missing) or 'the tools'}: "
            "`scripts/install-test-deps` (as the test command in docs/testing.md runs it)."
        )
    root = tmp_path_factory.mktemp("exfat")
    image, mount = root / "cache.img", root / "mnt"
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount.exfat-fuse", loop, str(mount)], check=True, capture_output=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
