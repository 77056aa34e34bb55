"""A cached file with wrong bytes is found and fetched again (issue 11, item 2).

Reuse used to check the size only: a flipped byte in a blob stayed forever, `verify` said
"fetch them again", and `download` then fetched nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from provision.hub import verify_profile
from provision.profiles import load_profile
from tests.cli_helpers import run_cli, run_json

SHARD = "model-00001-of-00002.safetensors"


def _flip(path: Path, keep_mtime: bool = False) -> None:
    """Change one byte in the middle of the file, in place (the blob keeps its name and size)."""
    real = path.resolve()
    st = real.stat()
    with real.open("r+b") as handle:
        handle.seek(st.st_size // 2)
        byte = handle.read(1)
        handle.seek(st.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(real, ns=(st.st_atime_ns, st.st_mtime_ns))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(*extra: str) -> dict:
    rc, out = run_json("download", "tiny", *extra)
    assert rc == 0, out
    return out


def test_flipped_byte_in_an_lfs_blob_is_fetched_again(hub, tiny):
    first = _download()
    placed = Path(first["snapshot"]) / SHARD
    _flip(placed)
    assert run_cli("verify", "tiny").returncode == 1

    again = _download()
    assert again["bytes_fetched"] == (tiny.folder / SHARD).stat().st_size
    assert again["files_fetched"] == 1
    assert _sha(placed) == _sha(tiny.folder / SHARD)
    assert run_cli("verify", "tiny").returncode == 0
    # Unchanged since: the next run reads nothing over the network.
    assert _download()["bytes_fetched"] == 0


def test_flipped_byte_in_a_git_blob_is_fetched_again(hub, tiny):
    first = _download()
    placed = Path(first["snapshot"]) / "config.json"
    _flip(placed)
    again = _download()
    assert again["files_fetched"] == 1
    assert placed.read_bytes() == (tiny.folder / "config.json").read_bytes()
    assert run_cli("verify", "tiny").returncode == 0


def test_force_hashes_a_blob_whose_mtime_was_put_back(hub, tiny):
    first = _download()
    placed = Path(first["snapshot"]) / SHARD
    _flip(placed, keep_mtime=True)
    again = _download("--force")
    assert again["files_fetched"] == 1
    assert _sha(placed) == _sha(tiny.folder / SHARD)


def test_cheap_verify_that_setup_trusts_sees_a_changed_blob(hub, tiny):
    """setup re-runs skip the download when verify(hashes=False) passes: it must not pass."""
    first = _download()
    profile = load_profile("tiny")
    assert verify_profile(profile, hashes=False).ok
    _flip(Path(first["snapshot"]) / SHARD)
    cheap = verify_profile(profile, hashes=False)
    assert not cheap.ok and [c.path for c in cheap.problems] == [SHARD]
