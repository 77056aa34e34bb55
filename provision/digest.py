"""sha256 of a file, read in blocks: what locks record for weights and wheels, and check again."""

from __future__ import annotations

import hashlib
import os

_BLOCK = 8 * 1024 * 1024  # large reads: weight shards are gigabytes


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The file's sha256 as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
