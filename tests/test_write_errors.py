"""A full disk names the file that could not be written, and uv's last meaningful line is the
message (issue 11, item 7). The disk is a real 1 MiB tmpfs (the tests run as root, as CI does)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from provision.atomic import atomic_write_text
from provision.cli.main import os_error
from provision.envs import _explain_sync_failure
from tests.conftest import mounted_tmpfs


@pytest.fixture
def full_disk(tmp_path: Path):
    with mounted_tmpfs(tmp_path / "tiny-disk", "1m") as mount:
        target = mount / "pylock.toml"
        target.write_text("old = true\n")
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill what is left
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield target


def test_enospc_on_an_atomic_write_names_the_file_and_keeps_the_old_one(full_disk: Path):
    with pytest.raises(OSError) as caught:
        atomic_write_text(full_disk, "new = true\n" * 100_000)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(full_disk)
    assert str(full_disk) in os_error(caught.value).message
    assert full_disk.read_text() == "old = true\n"
    assert sorted(p.name for p in full_disk.parent.iterdir()) == ["filler", "pylock.toml"]


def test_uv_failure_message_is_its_last_meaningful_line_not_progress():
    stderr = "\n".join(
        [f"Downloading package-{i} (12.3MiB)" for i in range(30)]
        + [
            " Downloaded package-3",
            "error: Failed to install: torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "  Caused by: failed to write to file `/v/lib/python3.11/site-packages/torch/lib/x.so`:"
            " No space left on device (os error 28)",
        ]
    )
    error = _explain_sync_failure(stderr, {}, Path("pylock.toml"))
    assert "No space left on device" in error.message
    assert "Downloading" not in error.message
    assert "disk filled up" in error.message
