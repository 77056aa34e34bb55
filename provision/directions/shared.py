"""Sharing environments and caches between the people on one machine.

- The registry of environments lives in provision/env_registry.py (per-profile setup records
  there too).
- Group sharing: a direction's environment and the weights cache are made group-writable with
  the setgid bit on their folders (new files keep the group), an optional named group, and a
  umask that leaves group write on while setup runs (uv and the downloads inherit it).
- Symlinks: the Hugging Face cache links snapshots to blobs. Where the cache's file system cannot
  make a symlink (exFAT, FAT, some FUSE or SMB mounts) HF_HUB_DISABLE_SYMLINKS=1 makes
  huggingface_hub (and provision's downloader) copy instead. Found by trying one, not guessed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.env_registry import current_user
from provision.errors import ProvisionError

GROUP_BITS = stat.S_IRWXG | stat.S_ISGID


# --- group sharing --------------------------------------------------------------------------------


@contextlib.contextmanager
def shared_umask(shared: bool = True) -> Iterator[None]:
    """While the block runs, new files are group-writable (umask without group bits), so a
    teammate in the group can update what this setup made; restored afterwards."""
    if not shared:
        yield
        return
    old = os.umask(0o002)
    os.umask(old & ~0o070)
    try:
        yield
    finally:
        os.umask(old)


def group_id(group: str) -> int:
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ProvisionError(
            f"The group {group!r} the direction shares its environment with does not exist here.",
            f"Create it (groupadd {group}; usermod -aG {group} USER for each teammate), or "
            "remove `group` from the direction's [environment].",
        ) from None


def share_dir(path: Path, group: str | None = None) -> list[str]:
    """Make `path` (created if missing) a folder the group can share: group rwx and setgid, so
    files made inside keep its group; chgrp'd to `group` when given. Returns notes on what
    could not be changed (someone else's folder, a file system without Unix modes)."""
    notes: list[str] = []
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"Cannot create {path}: {exc.strerror}.",
            "Choose a data disk you can write to (PROVISION_DATA_DIR) or --env elsewhere.",
        ) from exc
    info = path.stat()
    mine = info.st_uid == os.geteuid() or os.geteuid() == 0
    if group is not None:
        gid = group_id(group)
        if info.st_gid != gid:
            try:
                os.chown(path, -1, gid)
            except OSError as exc:
                raise ProvisionError(
                    f"Cannot give {path} to group {group}: {exc.strerror}.",
                    f"Join the group (usermod -aG {group} {current_user()}) and log in again, "
                    f"or ask the owner of {path} to run: chgrp {group} {path}",
                ) from exc
    if info.st_mode & GROUP_BITS != GROUP_BITS:
        if not mine:
            notes.append(f"{path} belongs to someone else and is not group-shared")
        else:
            try:
                os.chmod(path, stat.S_IMODE(info.st_mode) | GROUP_BITS)
            except OSError as exc:
                notes.append(f"{path}: cannot set group permissions ({exc.strerror})")
            else:
                if path.stat().st_mode & GROUP_BITS != GROUP_BITS:
                    notes.append(f"{path}: its file system keeps no Unix permissions")
    return notes


# --- symlinks -------------------------------------------------------------------------------------


def symlinks_supported(folder: Path) -> bool:
    """Try to make a symlink in `folder` (created if missing); True if the file system can."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    source = folder / f".provision-symlink-probe-{token}"
    link = folder / f".provision-symlink-probe-{token}.link"
    try:
        source.write_bytes(b"")
        try:
            os.symlink(source.name, link)
        except OSError:
            return False
        return link.is_symlink()
    finally:
        for leftover in (link, source):
            with contextlib.suppress(OSError):
                leftover.unlink()


@dataclass
class SharedCache:
    """What `prepare_shared` did: the folders, the variables it set, what it could not do."""

    hf_home: Path
    modelscope_cache: Path
    symlinks: bool
    env_vars: dict[str, str] = field(default_factory=dict)  # set in this process
    shared: bool = True
    group: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "hf_home": str(self.hf_home),
            "modelscope_cache": str(self.modelscope_cache),
            "symlinks": self.symlinks,
            "env": self.env_vars,
            "shared": self.shared,
            "group": self.group,
            "notes": self.notes,
        }


def prepare_shared(
    folders: list[Path],
    hf_home: Path,
    modelscope_cache: Path,
    shared: bool,
    group: str | None,
    hub: Path | None = None,
) -> SharedCache:
    """Create the environment's and the caches' folders (group-shared when `shared`) and set
    HF_HUB_DISABLE_SYMLINKS=1 in this process when the HF cache (`hub`, default HF_HOME/hub)
    cannot hold symlinks. Call it before anything imports huggingface_hub (it reads the variable
    at import)."""
    notes: list[str] = []
    hub = hub or hf_home / "hub"
    for folder in [*folders, hf_home, hub, modelscope_cache]:
        if shared:
            notes += share_dir(folder, group)
        else:
            folder.mkdir(parents=True, exist_ok=True)
    links = symlinks_supported(hub)
    env_vars: dict[str, str] = {}
    if not links:
        env_vars["HF_HUB_DISABLE_SYMLINKS"] = "1"
        env_vars["HF_HUB_DISABLE_SYMLINKS_WARNING"] = "1"  # it is on purpose: say so once, here
        notes.append(
            f"{hub} is on a file system without symlinks: the cache keeps copies "
            "(HF_HUB_DISABLE_SYMLINKS=1)"
        )
    os.environ.update(env_vars)
    return SharedCache(hf_home, modelscope_cache, links, env_vars, shared, group, notes)
