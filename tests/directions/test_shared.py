"""Sharing one machine: the registry under concurrent writers, group-shared folders that another
real user of the group can write to (and one outside it cannot), the umask, and a cache on a file
system without symlinks (a real exFAT mount), where the downloader copies and the real
huggingface_hub still finds every file offline."""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from provision.directions.shared import (
    prepare_shared,
    share_dir,
    shared_umask,
    symlinks_supported,
)
from provision.env_registry import read_registry, record_use, registered, try_record_use
from provision.errors import ProvisionError
from tests.directions.helpers import write_profile

NOBODY = 65534
GROUP = "users"  # present on every Debian system (gid 100); nobody is not in it


def test_registry_keeps_every_concurrent_writer(tmp_path):
    registry = tmp_path / "envs" / "registry.json"
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from provision.env_registry import record_use
        registry, user = Path(sys.argv[1]), sys.argv[2]
        for i in range(5):
            record_use(registry, registry.parent / f"env-{i % 2}", kind="direction",
                       name=f"dir-{i % 2}", status="ok", members=["m"], user=user)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(registry), f"user{n}"]) for n in range(6)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    entries = {e.path.name: e for e in registered(registry)}
    assert set(entries) == {"env-0", "env-1"}
    for entry in entries.values():
        assert set(entry.users) == {f"user{n}" for n in range(6)}
        assert all(u["setups"] in (2, 3) for u in entry.users.values())
    assert sum(u["setups"] for e in entries.values() for u in e.users.values()) == 30
    assert stat.S_IMODE(registry.stat().st_mode) & stat.S_IWGRP  # everyone records here


def test_registry_entry_says_who_and_what(tmp_path):
    registry = tmp_path / "registry.json"
    env = tmp_path / "envs" / "direction-x"
    lock = tmp_path / "pylock.direction-x.toml"
    record_use(registry, env, kind="direction", name="x", status="setting up",
               members=["a", "b"], user="alice", lock=lock)  # fmt: skip
    entry = record_use(registry, env, kind="direction", name="x", status="ok", user="alice")
    assert entry.status == "ok" and entry.created_by == "alice" and entry.members == ["a", "b"]
    assert entry.users["alice"]["setups"] == 1  # "setting up" is not a finished setup
    assert entry.lock == str(lock)
    assert entry.exists is False  # no pyvenv.cfg there
    registry.write_text("{not json")
    with pytest.raises(ProvisionError, match="registry .* is damaged"):
        read_registry(registry)  # the plain read says so; recording repairs


@pytest.mark.parametrize(
    "damage",
    [b"{not json", b"[]", b'{"environments": []}', b'{"environments": {"/e": 1}}', b"\xff\xfe"],
)
def test_a_damaged_registry_is_moved_aside_and_recording_goes_on(tmp_path, damage):
    registry = tmp_path / "envs" / "registry.json"
    registry.parent.mkdir()
    registry.write_bytes(damage)
    env = tmp_path / "envs" / "direction-x"
    entry = record_use(registry, env, kind="direction", name="x", status="ok", user="alice")
    assert entry.status == "ok" and entry.users["alice"]["setups"] == 1
    (aside,) = registry.parent.glob("registry.json.damaged-*")
    assert aside.read_bytes() == damage  # kept whole, for whoever wants to look
    assert len(entry.notes) == 1 and str(aside) in entry.notes[0] and "damaged" in entry.notes[0]
    # The new registry is whole and holds the new entry; nothing left over to repair.
    assert json.loads(registry.read_text())["environments"][str(env)]["status"] == "ok"
    assert record_use(registry, env, kind="direction", name="x", status="ok").notes == []


def test_listing_a_damaged_registry_repairs_it_with_a_note(tmp_path):
    registry = tmp_path / "registry.json"
    registry.write_text('{"environments": "cut sh')
    notes: list[str] = []
    assert registered(registry, notes) == []
    assert len(notes) == 1 and "registry.json.damaged-" in notes[0]
    assert registered(registry) == [] and not registry.exists()  # the next record writes it
    (aside,) = tmp_path.glob("registry.json.damaged-*")
    assert aside.read_text() == '{"environments": "cut sh'


def test_an_unwritable_registry_is_a_note_not_an_error(tmp_path):
    registry = tmp_path / "registry.json"
    registry.mkdir()  # not a file: neither readable nor replaceable
    entry, notes = try_record_use(registry, tmp_path / "e", kind="profile", name="x", status="ok")
    assert entry is None and len(notes) == 1 and str(registry) in notes[0]


def test_shared_umask_makes_group_writable_files_and_is_restored(tmp_path):
    before = os.umask(0o022)
    try:
        with shared_umask():
            (tmp_path / "shared").write_text("x")
        (tmp_path / "private").write_text("x")
        with shared_umask(shared=False):
            (tmp_path / "unshared").write_text("x")
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "unshared").stat().st_mode) == 0o644


@pytest.fixture
def public_tmp():
    """A folder other users can reach (pytest's own tmp is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="provision-shared-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as_nobody(code: str, groups: list[int]) -> subprocess.CompletedProcess[str]:
    # The system Python (the project's lives under /root, which nobody may enter); the probe
    # uses the stdlib only, taking the lock as filelock does (open read-write, flock).
    return subprocess.run(
        ["/usr/bin/python3", "-c", code],
        user=NOBODY,
        group=NOBODY,
        extra_groups=groups,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
    )


def test_group_shared_folder_another_user_of_the_group_can_use(public_tmp):
    gid = grp.getgrnam(GROUP).gr_gid
    cache = public_tmp / "huggingface"
    with shared_umask():
        assert share_dir(cache, GROUP) == []
        (cache / "hub").mkdir()  # made later, by anyone: inherits the group and setgid
        lock_file = cache / "hub" / ".blob.lock"
        from provision.atomic import file_lock

        with file_lock(lock_file):
            pass
    for folder in (cache, cache / "hub"):
        info = folder.stat()
        assert info.st_gid == gid and info.st_mode & stat.S_ISGID and info.st_mode & stat.S_IWGRP
    probe = textwrap.dedent(
        f"""
        import fcntl, os
        from pathlib import Path
        Path({str(cache / "hub" / "from-teammate")!r}).write_text("hi")
        fd = os.open({str(lock_file)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("ok")
        """
    )
    teammate = _as_nobody(probe, [gid])
    assert teammate.returncode == 0, teammate.stderr
    assert (cache / "hub" / "from-teammate").stat().st_gid == gid
    outsider = _as_nobody(probe.replace("from-teammate", "from-outsider"), [])
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr


def test_unknown_group_is_one_message(tmp_path):
    with pytest.raises(ProvisionError, match="group 'no-such-group-x' .* does not exist"):
        share_dir(tmp_path / "x", "no-such-group-x")


def test_symlink_probe_tries_one_for_real(tmp_path, exfat_dir):
    assert symlinks_supported(tmp_path / "hub") is True
    assert symlinks_supported(exfat_dir / "probe") is False
    assert sorted(p.name for p in (exfat_dir / "probe").iterdir()) == []  # nothing left behind
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == []


def test_prepare_shared_turns_symlinks_off_only_where_they_fail(tmp_path, exfat_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_SYMLINKS", raising=False)
    here = prepare_shared([tmp_path / "envs"], tmp_path / "hf", tmp_path / "ms", True, None)
    assert here.symlinks and here.env_vars == {}
    assert "HF_HUB_DISABLE_SYMLINKS" not in os.environ
    there = prepare_shared([], exfat_dir / "hf", exfat_dir / "ms", True, None)
    assert not there.symlinks
    assert there.env_vars["HF_HUB_DISABLE_SYMLINKS"] == "1"
    assert os.environ["HF_HUB_DISABLE_SYMLINKS"] == "1"
    assert any("without symlinks" in note for note in there.notes)
    # exFAT keeps no Unix modes (chmod answers EPERM): said, not fatal
    assert any("cannot set group permissions" in note for note in there.notes)


@pytest.mark.parametrize("disabled", [False, True], ids=["link-fails", "variable-set"])
def test_download_into_a_cache_without_symlinks(
    exfat_dir, tiny_llava, hub_server, hub_client_env, monkeypatch, tmp_path, disabled
):
    """The downloader copies into snapshots where links fail (on exFAT) or are turned off (the
    variable, on a disk that has links), and the real huggingface_hub, offline, finds the model
    there."""
    from provision.hub.download import download_profile
    from provision.profiles import load_profile

    # Turned off by the variable on a disk where links work: only the variable makes copies.
    hf_home = tmp_path / "hf-disabled" if disabled else exfat_dir / "hf-links-fail"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    if disabled:
        monkeypatch.setenv("HF_HUB_DISABLE_SYMLINKS", "1")
    else:
        monkeypatch.delenv("HF_HUB_DISABLE_SYMLINKS", raising=False)
    commit = hub_server.add_repo("tiny-org/exfat-llava", tiny_llava)
    write_profile(tmp_path / "profiles", "tiny-exfat", "tiny-org/exfat-llava")
    profile = load_profile("tiny-exfat", tmp_path / "profiles")
    got = download_profile(profile, hub_server.url, lock_file=tmp_path / "pylock.x.toml")
    snapshot = hf_home / "hub" / "models--tiny-org--exfat-llava" / "snapshots" / commit
    assert got.commit == commit
    for record in got.files:
        placed = snapshot / record.path
        assert placed.is_file() and not placed.is_symlink()
        assert placed.stat().st_size == record.size
    again = download_profile(profile, hub_server.url, lock_file=tmp_path / "pylock.x.toml")
    assert again.bytes_fetched == 0  # the copies count as there
    code = textwrap.dedent(
        """
        import sys
        from huggingface_hub import snapshot_download
        path = snapshot_download("tiny-org/exfat-llava", local_files_only=True)
        print(path)
        """
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env["HF_HUB_DISABLE_SYMLINKS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == snapshot
    config = json.loads((snapshot / "config.json").read_text())
    assert config["model_type"] == "llava"


def test_setup_says_when_the_shared_env_came_from_another_lockfile(tmp_path):
    from provision.directions.setup import _other_lock

    registry, env = tmp_path / "registry.json", tmp_path / "envs" / "direction-x"
    mine, theirs = tmp_path / "me" / "pylock.direction-x.toml", tmp_path / "alice" / "p.toml"
    assert _other_lock(registry, env, mine) == []  # nothing registered yet
    record_use(registry, env, kind="direction", name="x", status="ok", lock=theirs, user="alice")
    (note,) = _other_lock(registry, env, mine)
    assert f"last set up from {theirs} (by alice)" in note and "--lock PATH" in note
    record_use(registry, env, kind="direction", name="x", status="ok", lock=mine, user="bob")
    assert _other_lock(registry, env, mine) == []
