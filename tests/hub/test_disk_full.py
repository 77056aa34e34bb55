"""A full disk: a real 20 MiB tmpfs holds the cache (the tests run as root, as CI does).

Before starting, the downloader compares what is left to fetch with the free space; a disk that
fills up during the transfer stops it with one message, keeps the partial file, and the rerun
resumes. Neither case loses what was downloaded before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.hub import verify_profile
from provision.profiles import load_profile
from tests.cli_helpers import invoke, invoke_json
from tests.conftest import mounted_tmpfs
from tests.hub import helpers


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_env):
    with mounted_tmpfs(tmp_path / "small-disk", "20m") as mount:
        monkeypatch.setenv("HF_HOME", str(mount / "hf"))
        yield mount


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _fill(mount: Path, leave: int) -> Path:
    filler = mount / "filler.bin"
    size = _free(mount) - leave
    with filler.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def test_not_enough_space_is_refused_before_anything_is_fetched(hub, tmp_path, small_disk):
    small = helpers.make_repo(tmp_path / "src" / "small", {"model.safetensors": 2_000_000})
    hub.add_repo("org/small", small)
    helpers.write_profile(tmp_path / "profiles", "small", "org/small")
    assert invoke("download", "small", "--source", hub.url).returncode == 0

    big = helpers.make_repo(tmp_path / "src" / "big", {"model.safetensors": 30_000_000})
    hub.add_repo("org/big", big)
    helpers.write_profile(tmp_path / "profiles", "big", "org/big")
    hub.reset_counters()
    proc = invoke("download", "big", "--source", hub.url)
    assert proc.returncode == 2
    assert "Not enough free space" in proc.stderr and "org/big" in proc.stderr
    assert "PROVISION_DATA_DIR" in proc.stderr and "Traceback" not in proc.stderr
    assert hub.bytes_sent == 0
    assert verify_profile(load_profile("small")).ok  # the earlier download is untouched


def test_disk_filling_up_mid_transfer_keeps_everything_and_resumes(hub, tmp_path, small_disk):
    small = helpers.make_repo(tmp_path / "src" / "small", {"model.safetensors": 2_000_000})
    hub.add_repo("org/small", small)
    helpers.write_profile(tmp_path / "profiles", "small", "org/small")
    assert invoke("download", "small", "--source", hub.url).returncode == 0

    size = 6_000_000
    big = helpers.make_repo(tmp_path / "src" / "big", {"model.safetensors": size}, seed=3)
    hub.add_repo("org/big", big)
    helpers.write_profile(tmp_path / "profiles", "big", "org/big")
    _fill(small_disk, leave=8_000_000)  # room for the check, not for what comes next
    hub.fault("model.safetensors", throttle=2_000_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision", "download", "big", "--source", hub.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    blobs = small_disk / "hf" / "hub" / "models--org--big" / "blobs"
    partials = lambda: list(blobs.glob("*.provision-partial"))  # noqa: E731
    helpers.wait_for(lambda: any(p.stat().st_size > 1_000_000 for p in partials()), 60)
    second = small_disk / "filler2.bin"
    with second.open("wb") as handle, contextlib.suppress(OSError):
        while True:  # whatever is free now, taken by someone else
            handle.write(b"\0" * 65536)
            handle.flush()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "The disk filled up while writing model.safetensors" in stderr
    assert "Traceback" not in stderr
    (partial,) = partials()
    kept = partial.stat().st_size
    assert 1_000_000 < kept < size
    assert verify_profile(load_profile("small")).ok

    second.unlink()
    hub.wait_idle()
    hub.clear_faults()
    hub.reset_counters()
    rc, out = invoke_json("download", "big", "--source", hub.url)
    assert rc == 0, out
    assert hub.bytes_for("org/big/model.safetensors") == size - kept
    assert verify_profile(load_profile("big")).ok
