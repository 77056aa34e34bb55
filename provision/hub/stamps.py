"""What a placed file looked like when provision last hashed it: size, mtime and sha256.

Reusing a cached file on size alone keeps a flipped byte forever. Hashing every reused shard on
every run costs minutes. So each file provision places (or hashes in full) gets a stamp, kept in
the cache beside the clients' own folders: `<cache>/.provision-stamps/<sha256 of the file's real
path>`. A file whose size and mtime still equal its stamp's, and whose stamp names the sha256
wanted, is trusted without reading it; anything else is hashed again (and fetched again when the
hash is wrong). A stamp that cannot be written (a read-only shared cache) only costs a hash next
time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from provision.atomic import atomic_write_text
from provision.digest import file_sha256

FOLDER = ".provision-stamps"


def _stamp(root: Path, target: Path) -> Path:
    real = os.path.realpath(target)  # a snapshot link and its blob share one stamp
    return Path(root) / FOLDER / hashlib.sha256(real.encode()).hexdigest()


def record(root: Path, target: Path, sha256: str) -> None:
    """Remember that `target`, as it is now on disk, hashes to `sha256`."""
    with contextlib.suppress(OSError):
        st = os.stat(target)
        text = json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})
        # No fsync: a stamp lost or left empty by a power cut only means the file is hashed
        # again next run (`trusted` wants valid JSON matching size, mtime and hash), while two
        # fsyncs per placed file made a 1000-file download 1.45x-1.85x `hf download` (issue 17).
        atomic_write_text(_stamp(root, target), text, durable=False)


def trusted(root: Path, target: Path, sha256: str) -> bool:
    """True when `target` is unchanged since it was stamped with `sha256` (no read of it)."""
    try:
        st = os.stat(target)
        seen = json.loads(_stamp(root, target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(seen, dict)
        and seen.get("sha256") == sha256
        and seen.get("size") == st.st_size
        and seen.get("mtime_ns") == st.st_mtime_ns
    )


def hash_and_record(root: Path, target: Path) -> str:
    """The sha256 of `target`, read in full, stamped for the next run."""
    digest = file_sha256(target)
    record(root, target, digest)
    return digest


def matches(root: Path, target: Path, sha256: str | None, rehash: bool = False) -> bool:
    """True when `target` hashes to `sha256`: from its stamp when unchanged since (not with
    `rehash`), else read in full (and stamped with what it hashes to)."""
    if sha256 and not rehash and trusted(root, target, sha256):
        return True
    return hash_and_record(root, target) == sha256


def git_blob_id(path: Path) -> str:
    """git's blob id for the file (sha1 over "blob <size>\\0" + content)."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()
