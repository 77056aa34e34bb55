"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int | None = None, durable: bool = True
) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.

    If anything fails before the rename, the old file is untouched and the temporary is removed.
    The new file keeps the old file's permission bits unless `mode` is given. `durable=False`
    skips both fsyncs (the file's and its folder's): for files whose loss in a power cut costs
    only work redone (a cache hint), written once per file of a download.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode is None and target.exists():
        mode = target.stat().st_mode & 0o7777
    # Created with 0o666 so the kernel applies the umask (what a plain open() would give); reading
    # the umask instead means setting it, which races with other threads creating files.
    tmp = target.parent / f".{target.name}.{os.urandom(6).hex()}.tmp"  # as secrets.token_hex
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename is None:  # ENOSPC/EDQUOT/EPERM from write or fsync: name the file
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(target.parent)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, mode: int | None = None, durable: bool = True
) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, durable=durable)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> Iterator[None]:
    """An inter-process lock on `path` (created if missing); waits `timeout` s (-1: forever),
    then raises TimeoutError.

    flock(2) on the file, as the filelock package does on Linux, without its import (40-200 ms
    here: logging, inspect, ast). flock locks belong to the open file, so two threads of one
    process exclude each other too (the download workers rely on it). A lock file someone else
    created read-only for us (a shared environment) is locked through a read-only descriptor.
    """
    import fcntl

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(target, os.O_RDONLY)
    try:
        if timeout < 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"The file lock {target} could not be acquired."
                        ) from None
                    time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
