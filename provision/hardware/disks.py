"""Where big files should go: candidate data directories and their free space.

Rented GPU boxes have a small system disk and a big data disk (AutoDL: /root/autodl-tmp); weights,
caches and environments belong on the big one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError

AUTODL_DATA = Path("/root/autodl-tmp")
# File systems that never hold a user's data disk.
_PSEUDO_FS = {
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "overlay", "squashfs",
    "securityfs", "debugfs", "tracefs", "mqueue", "hugetlbfs", "pstore", "bpf", "autofs",
    "configfs", "fusectl", "binfmt_misc", "nsfs", "ramfs", "rpc_pipefs", "efivarfs", "shm",
}  # fmt: skip
_SYSTEM_MOUNTS = (
    "/",
    "/boot",
    "/boot/efi",
    "/etc",
    "/usr",
    "/var",
    "/snap",
    "/run",
    "/dev",
    "/proc",
    "/sys",
)

# Mounts under these are the system's or short-lived (test and container scratch), not data disks.
_SYSTEM_TREES = ("/proc", "/sys", "/dev", "/run", "/boot", "/snap", "/var/lib", "/tmp")


@dataclass(frozen=True)
class DataDir:
    path: Path  # where provision puts its caches and environments
    free: int  # bytes free on that file system
    total: int
    reason: str  # why it is a candidate

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "free": self.free,
            "total": self.total,
            "reason": self.reason,
        }


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: the folder a new one would be made in."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def unusable(path: Path, write: bool = True) -> str | None:
    """Why provision cannot make and (with `write`) write `path`, or None when it can.

    Checked before free space is, so a read-only mount or a file in the way is named as that,
    not as a full disk (a read-only file system reports 0 bytes free). `write=False` asks only
    whether the folder can exist at all (reading a cache needs no write access).
    """
    probe = nearest_existing(path)
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if write and not os.access(probe, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return f"{probe} is on a read-only file system" if read_only else f"{probe} is not writable"
    return None


def require_usable(path: Path, what: str, fix: str, write: bool = True) -> None:
    """Raise one message naming `what` and why `path` cannot hold it."""
    reason = unusable(path, write)
    if reason is not None:
        raise ProvisionError(f"{what} {path} cannot be used: {reason}.", fix)


# What provision keeps in a data dir: finding one of these there means "this is the one in use".
IN_USE_MARKERS = ("envs", "huggingface", "modelscope")


def in_use(path: Path) -> bool:
    return any((path / marker).is_dir() for marker in IN_USE_MARKERS)


def _usage(path: Path) -> tuple[int, int] | None:
    try:
        usage = shutil.disk_usage(nearest_existing(path))
    except OSError:
        return None
    return usage.free, usage.total


def system_tree(mount_point: str) -> bool:
    """Under /tmp, /run, /dev...: not a data disk (but /tmpdata or /runs may be)."""
    return any(mount_point == t or mount_point.startswith(t + "/") for t in _SYSTEM_TREES)


def _mounted_volumes(mounts_file: str = "/proc/mounts") -> list[Path]:
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        fs_type = parts[2]
        if fs_type in _PSEUDO_FS or mount_point in _SYSTEM_MOUNTS:
            continue
        if system_tree(mount_point):
            continue
        found.append(Path(mount_point))
    # A bind mount of the system disk (container storage, say) is not another disk.
    try:
        root_dev = os.stat("/").st_dev
    except OSError:
        return found
    distinct = []
    for mount in found:
        try:
            if os.stat(mount).st_dev != root_dev:
                distinct.append(mount)
        except OSError:
            continue
    return distinct


def candidate_data_dirs(mounts_file: str = "/proc/mounts") -> list[DataDir]:
    """Candidates, preferred first: PROVISION_DATA_DIR, AutoDL's data disk, /data, volumes, home."""
    seen: set[Path] = set()
    out: list[DataDir] = []

    def add(path: Path, reason: str, chosen: bool = False) -> None:
        path = path.expanduser()
        if path in seen or unusable(path, write=False):
            return
        # A read-only volume is no place for new caches, but one that already holds them (a
        # lab's shared, complete cache) or one the user chose stays: reading needs no write.
        if not chosen and unusable(path) and not in_use(path):
            return
        usage = _usage(path)
        if usage is None:
            return
        seen.add(path)
        out.append(DataDir(path=path, free=usage[0], total=usage[1], reason=reason))

    env = os.environ.get("PROVISION_DATA_DIR")
    if env:
        # Set by the user: a file in the way is their mistake to hear about, not something to
        # pass over silently for another disk. A read-only one is taken as given: what needs to
        # write there (a download, an environment) says so when it does.
        require_usable(
            Path(env).expanduser(),
            "PROVISION_DATA_DIR",
            "Point PROVISION_DATA_DIR at a folder, on a disk with room for weights.",
            write=False,
        )
        add(Path(env), "PROVISION_DATA_DIR", chosen=True)
    if AUTODL_DATA.is_dir():
        add(AUTODL_DATA, "AutoDL data disk")
    if Path("/data").is_dir():
        add(Path("/data/provision"), "/data volume")
    for mount in _mounted_volumes(mounts_file):
        if mount in (AUTODL_DATA, Path("/data")) or mount == Path.home():
            continue
        add(mount / "provision", f"mounted volume {mount}")
    add(Path.home() / ".cache" / "provision", "home directory")
    return out


def pick_data_dir(candidates: list[DataDir]) -> DataDir:
    """PROVISION_DATA_DIR or AutoDL's data disk when there; else the candidate already holding
    provision's environments or caches (so the choice does not move once weights fill a disk and
    another volume becomes the roomier); else the roomiest."""
    if not candidates:
        raise ProvisionError(
            "No usable data directory found.", "Set PROVISION_DATA_DIR to a folder on a big disk."
        )
    first = candidates[0]
    if first.reason in ("PROVISION_DATA_DIR", "AutoDL data disk"):
        return first
    for candidate in candidates:
        if in_use(candidate.path):
            return candidate
    return max(candidates, key=lambda d: d.free)


def choose_data_dir(mounts_file: str = "/proc/mounts") -> DataDir:
    """The data dir for this machine: see `pick_data_dir`."""
    return pick_data_dir(candidate_data_dirs(mounts_file))


def is_autodl() -> bool:
    return AUTODL_DATA.is_dir()
