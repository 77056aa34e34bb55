"""Data directories: the order of candidates, and a choice that stays put once used."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.hardware import disks
from provision.hardware.disks import DataDir, candidate_data_dirs, pick_data_dir

GIB = 1024**3


def _dir(path: Path, free_gib: float, reason: str) -> DataDir:
    path.mkdir(parents=True, exist_ok=True)
    return DataDir(path=path, free=int(free_gib * GIB), total=int(1000 * GIB), reason=reason)


def test_env_variable_comes_first_and_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    found = candidate_data_dirs(mounts_file=str(tmp_path / "no-mounts"))
    assert found[0].path == tmp_path / "mine" and found[0].reason == "PROVISION_DATA_DIR"
    assert found[-1].reason == "home directory"
    assert pick_data_dir(found) == found[0]  # even before the folder exists


def test_autodl_data_disk(tmp_path, monkeypatch):
    monkeypatch.delenv("PROVISION_DATA_DIR", raising=False)
    autodl = tmp_path / "autodl-tmp"
    autodl.mkdir()
    monkeypatch.setattr(disks, "AUTODL_DATA", autodl)
    found = candidate_data_dirs(mounts_file=str(tmp_path / "no-mounts"))
    assert found[0].path == autodl and pick_data_dir(found).path == autodl


def test_the_roomiest_until_one_is_in_use(tmp_path):
    small = _dir(tmp_path / "home", 40, "home directory")
    big = _dir(tmp_path / "vol", 300, "mounted volume /vol")
    assert pick_data_dir([small, big]) == big
    # Weights filled the big volume; it is still the one in use.
    (big.path / "huggingface").mkdir()
    filled = DataDir(big.path, 10 * GIB, big.total, big.reason)
    assert pick_data_dir([small, filled]) == filled


def test_no_candidate_is_one_message():
    with pytest.raises(ProvisionError, match="PROVISION_DATA_DIR"):
        pick_data_dir([])


def test_a_data_dir_that_cannot_be_written_is_one_message(tmp_path, monkeypatch, read_only):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    for path, reason in [(blocker / "data", "is a file"), (read_only / "data", "read-only")]:
        monkeypatch.setenv("PROVISION_DATA_DIR", str(path))
        with pytest.raises(
            ProvisionError, match=f"PROVISION_DATA_DIR {path} cannot be used.*{reason}"
        ):
            candidate_data_dirs(mounts_file=str(tmp_path / "no-mounts"))


def test_read_only_and_scratch_mounts_are_not_candidates(tmp_path, monkeypatch, read_only):
    monkeypatch.delenv("PROVISION_DATA_DIR", raising=False)
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"tmpfs {read_only} ext4 ro,relatime 0 0\n/dev/vdb /tmp/x ext4 rw 0 0\n")
    found = candidate_data_dirs(mounts_file=str(mounts))
    assert all(not str(d.path).startswith((str(read_only), "/tmp/x")) for d in found)
    # And a read-only folder is passed over even when no mount table says so.
    monkeypatch.setattr(disks.Path, "home", lambda: read_only)
    assert all(d.reason != "home directory" for d in candidate_data_dirs(str(mounts)))
