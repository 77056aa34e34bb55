"""Data directories: the order of candidates, and a choice that stays put once used."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.hardware import disks
from provision.hardware.disks import DataDir, candidate_data_dirs, pick_data_dir
from tests.conftest import remount_read_only

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


def test_a_data_dir_behind_a_file_is_one_message(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    monkeypatch.setenv("PROVISION_DATA_DIR", str(blocker / "data"))
    with pytest.raises(ProvisionError, match=f"PROVISION_DATA_DIR {blocker}/data cannot be used"):
        candidate_data_dirs(mounts_file=str(tmp_path / "no-mounts"))


def test_read_only_folders_are_passed_over_unless_in_use_or_chosen(
    tmp_path, monkeypatch, tmpfs_volume
):
    monkeypatch.delenv("PROVISION_DATA_DIR", raising=False)
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    no_mounts = str(tmp_path / "no-mounts")
    home = tmpfs_volume / "home"
    (home / ".cache" / "provision").mkdir(parents=True)
    monkeypatch.setattr(disks.Path, "home", lambda: home)
    assert [d.reason for d in candidate_data_dirs(no_mounts)] == ["home directory"]
    remount_read_only(tmpfs_volume)
    # Read-only and empty: no place for new caches.
    assert candidate_data_dirs(no_mounts) == []
    # Chosen by the user: taken as given (what must write there says so when it does).
    monkeypatch.setenv("PROVISION_DATA_DIR", str(home / "chosen"))
    assert [d.reason for d in candidate_data_dirs(no_mounts)] == ["PROVISION_DATA_DIR"]


def test_a_read_only_volume_that_holds_the_caches_stays_the_choice(
    tmp_path, monkeypatch, tmpfs_volume
):
    """A lab's shared, complete, read-only cache is still where the weights are."""
    monkeypatch.delenv("PROVISION_DATA_DIR", raising=False)
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    monkeypatch.setattr(disks.Path, "home", lambda: tmpfs_volume)
    shared = tmpfs_volume / ".cache" / "provision"
    (shared / "huggingface").mkdir(parents=True)
    remount_read_only(tmpfs_volume)
    found = candidate_data_dirs(str(tmp_path / "no-mounts"))
    assert [d.path for d in found] == [shared]
    roomy = _dir(tmp_path / "vol", 300, "mounted volume /vol")
    assert pick_data_dir([roomy, *found]).path == shared


def test_system_trees_are_not_volumes_but_look_alike_names_are():
    assert disks.system_tree("/tmp/x") and disks.system_tree("/run") and disks.system_tree("/dev")
    assert not disks.system_tree("/tmpdata") and not disks.system_tree("/runs")
    assert not disks.system_tree("/mnt/data")
