"""Hostile and malformed hub answers (issue 11): nothing a server says becomes a path unchecked,
nothing outside the cache is created, and each case ends in one exit-2 message, no traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import run_cli

TREE = "/api/models/org/tiny/tree/*"


def _around(tmp_path: Path) -> set[str]:
    """Every path under tmp_path except inside the cache itself (hf/hub) and the hub's store."""
    cache, store = tmp_path / "hf" / "hub", tmp_path / "hub-root"
    seen = set()
    for root, dirs, files in os.walk(tmp_path):
        here = Path(root)
        if here in (cache, store):
            dirs.clear()
            continue
        for name in dirs + files:
            seen.add(str((here / name).relative_to(tmp_path)))
    return seen


def _set_oid(path: str, oid: str, lfs: bool = False):
    def edit(entries: Any) -> Any:
        for entry in entries:
            if entry.get("path") == path:
                if lfs:
                    entry["lfs"]["oid"] = oid
                else:
                    entry["oid"] = oid
        return entries

    return edit


def _assert_refused(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "path,oid,lfs",
    [
        ("config.json", "../../../escaped", False),
        ("model-00001-of-00002.safetensors", "../../../../escaped-lfs", True),
        ("config.json", "ABSOLUTE", False),
        ("model-00002-of-00002.safetensors", "ABSOLUTE", True),
    ],
    ids=["relative-git", "relative-lfs", "absolute-git", "absolute-lfs"],
)
def test_etag_injection_creates_nothing_outside_the_cache(hub, tiny, tmp_path, path, oid, lfs):
    # A local file of exactly the listed size: the old code "reused" it as the blob.
    victim = tmp_path / "victim" / "secret.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"v" * (tiny.folder / path).stat().st_size)
    if oid == "ABSOLUTE":
        oid = str(victim)
    hub.fault(TREE, edit=_set_oid(path, oid, lfs))
    before = _around(tmp_path)
    proc = run_cli("download", "tiny", "--source", hub.url)
    _assert_refused(proc, repr(path), "oid", "Nothing was downloaded")
    assert _around(tmp_path) == before
    assert victim.read_bytes() == b"v" * victim.stat().st_size
    assert not any(p.resolve() == victim for p in (tmp_path / "hf").rglob("*"))
    assert not (tmp_path / "locks" / "pylock.tiny.toml").exists()


def test_cache_refuses_a_path_built_from_a_bad_etag(tmp_path):
    from provision.hub.cache import HfCache

    cache = HfCache(tmp_path, "org/x")
    good = "a" * 64
    assert cache.blob(good).name == good
    for bad in ("../x", "/etc/passwd", "", "A" * 64, "a" * 63, "a" * 40 + "/.."):
        for build in (cache.blob, cache.partial, cache.lock, cache.leftovers):
            with pytest.raises(ValueError):
                build(bad)
