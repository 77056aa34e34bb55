"""The two cache layouts weights are placed in, exactly as their own clients lay them out.

Hugging Face (`HF_HOME/hub`, huggingface_hub 2.4 `file_download.py`):

    models--{org}--{name}/blobs/{etag}                      the content (etag: sha256 for LFS)
    models--{org}--{name}/snapshots/{commit}/{path} -> ../../blobs/{etag}
    models--{org}--{name}/refs/{revision}                   the commit, as text
    models--{org}--{name}/trees/{commit}.json               the tree listing (offline checks)
    .locks/models--{org}--{name}/{etag}.lock                huggingface_hub's own per-blob lock

Taking the same lock file as huggingface_hub means a `from_pretrained` downloading the same blob
in another process waits for us, and we for it. Our partial file, `blobs/{etag}.provision-partial`,
keeps its name across runs, which is what lets a killed download resume.

ModelScope (`MODELSCOPE_CACHE`, modelscope-hub `_download.py`):

    models/{org}--{name}/snapshots/{revision}/{path}        plain files
    .lock/file_{sha256(key)}.lock                           modelscope-hub's per-file lock
    (partial: {path}.incomplete, which modelscope-hub also resumes with Range)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text
from provision.errors import ProvisionError
from provision.hub.listing import RemoteFile, check_etag

PARTIAL_SUFFIX = ".provision-partial"
# What os.symlink raises on a file system without links (exFAT, FAT, some FUSE and SMB mounts).
_NO_SYMLINKS = {errno.EPERM, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def _symlinks_disabled() -> bool:
    """HF_HUB_DISABLE_SYMLINKS, read as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_DISABLE_SYMLINKS", "").upper() in {"1", "ON", "YES", "TRUE"}


@contextlib.contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """Whatever fails inside (a copy, the rename into place), the temporary file goes too."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _inside(base: Path, path: Path, resolve: Any = Path.resolve) -> Path:
    """`path`, after checking it stays under `base` (listing.check_path ran already: twice safe).
    `resolve(folder)` gives a folder's real path (a cache's `_Folders.resolve`: once per folder)."""
    resolved = resolve(path.parent) / path.name  # the file itself may be a symlink to a blob
    if not resolved.is_relative_to(resolve(base)):
        raise ValueError(f"{path} is outside {base}")
    return path


class _Folders:
    """Real paths of a cache's folders, each resolved once per download. Resolving resolves
    every component (an lstat each): asked twice per file (planning, then linking), with the
    snapshot folder each time, it was most of the planning of a 1000-file repository (issue 17).
    A repository has a few folders, so the check of each file against symlinks leading out of
    the snapshot stays, made once per folder. Safe from several threads: at worst a folder is
    resolved twice."""

    def __init__(self) -> None:
        self._seen: dict[Path, Path] = {}

    def resolve(self, folder: Path) -> Path:
        real = self._seen.get(folder)
        if real is None:
            real = self._seen[folder] = folder.resolve()
        return real


def check_revision(revision: str) -> None:
    """Refuse a revision that cannot be a git ref: it names a file under refs/ in the cache.

    Slashes are fine (`refs/pr/1`, `release/v1`); `..`, a leading `/` or a backslash would
    write outside the cache folder.
    """
    parts = revision.split("/")
    if not revision or revision.startswith("/") or "\\" in revision or ".." in parts or "" in parts:
        raise ProvisionError(
            f"Revision {revision!r} is not a branch, tag or commit name.",
            "Use a name such as main, v1.0 or refs/pr/1, or a 40-hex commit.",
        )


REPO_TYPES = ("model", "dataset")


class HfCache:
    """`repo_type` "dataset" is huggingface_hub's `datasets--{org}--{name}` folder, same layout."""

    def __init__(self, cache: Path, repo_id: str, repo_type: str = "model") -> None:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type {repo_type!r} is not one of {REPO_TYPES}")
        self.cache = Path(cache)
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.folder_name = f"{repo_type}s--" + repo_id.replace("/", "--")
        self.storage = self.cache / self.folder_name
        self._folders = _Folders()

    # Every path built from an etag checks it first: it comes from a server's listing or a lock.
    def blob(self, etag: str) -> Path:
        return self.storage / "blobs" / check_etag(etag)

    def partial(self, etag: str) -> Path:
        return self.storage / "blobs" / (check_etag(etag) + PARTIAL_SUFFIX)

    def lock(self, etag: str) -> Path:
        return self.cache / ".locks" / self.folder_name / f"{check_etag(etag)}.lock"

    def snapshot(self, commit: str) -> Path:
        check_revision(commit)  # from the hub's answer or a lock someone handed over
        return self.storage / "snapshots" / commit

    def pointer(self, commit: str, path: str) -> Path:
        snapshot = self.snapshot(commit)
        return _inside(snapshot, snapshot / Path(*path.split("/")), self._folders.resolve)

    def all_leftovers(self) -> dict[str, list[Path]]:
        """Partial files huggingface_hub left when it was killed (it never resumes them), for
        every blob from one listing of the folder (etag -> its partials): a download asks once,
        not once per file, so its cost stays linear in the file count."""
        blobs = self.storage / "blobs"
        found: dict[str, list[Path]] = {}
        if not blobs.is_dir():
            return found
        for name in sorted(os.listdir(blobs)):
            etag, dot, rest = name.partition(".")
            if dot and name.endswith("incomplete") and not name.endswith(PARTIAL_SUFFIX):
                found.setdefault(etag, []).append(blobs / name)
        return found

    def link(self, commit: str, path: str, etag: str) -> Path:
        """Point snapshots/{commit}/{path} at the blob, atomically (a relative symlink); where
        the cache's file system has no symlinks (HF_HUB_DISABLE_SYMLINKS=1, or the link fails)
        the snapshot holds a copy, as huggingface_hub's own cache does there."""
        pointer = self.pointer(commit, path)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.blob(etag), pointer.parent)
        if pointer.is_symlink() and os.readlink(pointer) == target:
            return pointer
        tmp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            if _symlinks_disabled():
                raise OSError(errno.ENOTSUP, "HF_HUB_DISABLE_SYMLINKS is set")
            os.symlink(target, tmp)
        except OSError as exc:
            if exc.errno not in _NO_SYMLINKS:
                raise
            return self._copy(pointer, self.blob(etag), tmp)
        with _removed_on_failure(tmp):
            os.replace(tmp, pointer)
        return pointer

    def _copy(self, pointer: Path, blob: Path, tmp: Path) -> Path:
        size = blob.stat().st_size
        if pointer.is_file() and not pointer.is_symlink() and pointer.stat().st_size == size:
            return pointer  # copied by an earlier run (the blob was verified before either)
        with _removed_on_failure(tmp):
            shutil.copyfile(blob, tmp)
            os.replace(tmp, pointer)
        return pointer

    def write_ref(self, revision: str, commit: str) -> None:
        check_revision(revision)
        if revision == commit:
            return
        ref = self.storage / "refs" / revision
        if ref.is_file() and ref.read_text() == commit:
            return
        atomic_write_text(ref, commit)  # huggingface_hub reads it without stripping: no newline

    def write_tree(self, commit: str, files: list[RemoteFile]) -> None:
        """trees/{commit}.json in huggingface_hub's format: its offline mode then knows whether
        a snapshot is complete."""
        entries = {}
        for f in sorted(files, key=lambda f: f.path):
            info: dict[str, object] = {"size": f.size, "blob_id": f.blob_id or f.etag}
            if f.lfs and f.sha256:
                info["lfs_sha256"] = f.sha256
                info["lfs_size"] = f.size
            entries[f.path] = info
        text = json.dumps({"format_version": 1, "files": entries}, indent=1)
        tree = self.storage / "trees" / f"{commit}.json"
        if tree.is_file() and tree.read_text(encoding="utf-8") == text:
            return  # unchanged: a complete cache on a read-only volume needs no write
        atomic_write_text(tree, text)


class ModelScopeCache:
    """`repo_type` "dataset": modelscope-hub's `datasets/{org}--{name}`, same layout."""

    def __init__(self, cache: Path, repo_id: str, repo_type: str = "model") -> None:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type {repo_type!r} is not one of {REPO_TYPES}")
        self.cache = Path(cache)
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.storage = self.cache / f"{repo_type}s" / repo_id.replace("/", "--")
        self._folders = _Folders()

    def snapshot(self, revision: str) -> Path:
        check_revision(revision)  # may come from a lock someone handed over
        return self.storage / "snapshots" / revision

    def file(self, revision: str, path: str) -> Path:
        snapshot = self.snapshot(revision)
        return _inside(snapshot, snapshot / Path(*path.split("/")), self._folders.resolve)

    def partial(self, revision: str, path: str) -> Path:
        target = self.file(revision, path)
        return target.with_name(target.name + ".incomplete")

    def lock(self, path: str) -> Path:
        """modelscope-hub's own lock for this file (DownloadManager._lock_path, key v2)."""
        parts = ("modelscope-hub-download-lock-v2", "file", self.repo_type, self.repo_id, path)
        key = "\0".join(parts)
        return self.cache / ".lock" / f"file_{hashlib.sha256(key.encode()).hexdigest()}.lock"
