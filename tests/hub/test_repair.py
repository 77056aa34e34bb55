"""A cached file with wrong bytes is found and fetched again (issue 11, item 2).

Reuse used to check the size only: a flipped byte in a blob stayed forever, `verify` said
"fetch them again", and `download` then fetched nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from provision.hub import verify_profile
from provision.profiles import load_profile
from tests.cli_helpers import invoke, invoke_json

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
    rc, out = invoke_json("download", "tiny", *extra)
    assert rc == 0, out
    return out


def test_flipped_byte_in_an_lfs_blob_is_fetched_again(hub, tiny):
    first = _download()
    placed = Path(first["snapshot"]) / SHARD
    _flip(placed)
    assert invoke("verify", "tiny").returncode == 1

    again = _download()
    assert again["bytes_fetched"] == (tiny.folder / SHARD).stat().st_size
    assert again["files_fetched"] == 1
    assert _sha(placed) == _sha(tiny.folder / SHARD)
    assert invoke("verify", "tiny").returncode == 0
    # Unchanged since: the next run reads nothing over the network.
    assert _download()["bytes_fetched"] == 0


def test_flipped_byte_in_a_git_blob_is_fetched_again(hub, tiny):
    first = _download()
    placed = Path(first["snapshot"]) / "config.json"
    _flip(placed)
    again = _download()
    assert again["files_fetched"] == 1
    assert placed.read_bytes() == (tiny.folder / "config.json").read_bytes()
    assert invoke("verify", "tiny").returncode == 0


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


def _seed_partial(tmp_path: Path, folder: Path, keep: int) -> Path:
    data = (folder / SHARD).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    blobs = tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / f"{sha}.provision-partial"
    partial.write_bytes(data[:keep])
    return partial


def test_a_refused_resume_point_starts_the_file_over(hub, tiny, tmp_path):
    """416 on the resume: the partial goes and the file is fetched whole, once (item 10)."""
    _seed_partial(tmp_path, tiny.folder, 1_000_000)
    hub.fault(f"*{SHARD}", status=416, fail_first=1)
    out = _download("--include", SHARD)
    size = (tiny.folder / SHARD).stat().st_size
    assert out["bytes_fetched"] == size
    ranges = [r.range for r in hub.requests if r.file and r.file.endswith(SHARD)]
    assert ranges[0] == "bytes=1000000-" and ranges[1:] in ([None], ["bytes=0-"])
    assert invoke("verify", "tiny").returncode == 0


def test_after_a_refused_resume_the_message_keeps_no_bytes_it_lost(hub, tiny, tmp_path):
    partial = _seed_partial(tmp_path, tiny.folder, 1_000_000)
    hub.fault(f"*{SHARD}", status=416, fail_first=1000)
    proc = invoke("download", "tiny", "--include", SHARD)
    assert proc.returncode == 2, proc.stderr
    assert "are kept" not in proc.stderr and "Nothing of it is kept" in proc.stderr, proc.stderr
    assert not partial.exists()
