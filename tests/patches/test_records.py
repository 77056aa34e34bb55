"""Where a fix's hashes are recorded: --lock writes the lock itself, whatever this machine's
record of the same lock already holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.lock.lockfile import read_lock, record, record_file, tool_table
from provision.patches.engine import _store_record
from provision.patches.registry import get_fix

LOCK = """lock-version = "1.0"
created-by = "provision"
requires-python = ">=3.10"

[tool.provision.profile]
name = "tiny"
"""


def test_into_lock_writes_the_lock_even_when_the_machine_record_holds_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fix = get_fix("group-beam-search-dtype")
    entry = {"fix": fix.id, "file": fix.file, "version": "4.51.3", "patched_sha256": "a" * 64}
    lock = tmp_path / "pylock.toml"
    lock.write_text(LOCK, encoding="utf-8")
    data = tmp_path / "data"

    def add(table: dict) -> None:
        table["tool"]["provision"].setdefault("fixes", {})["files"] = [entry]

    # An earlier run without --lock left this machine's record of these very bytes.
    assert record(lock, add, data_dir=data) == record_file(lock, data)
    monkeypatch.setenv("PROVISION_DATA_DIR", str(data))
    _store_record(lock, fix, entry, into_lock=True)
    assert tool_table(read_lock(lock))["fixes"]["files"] == [entry]
