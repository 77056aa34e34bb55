"""Hostile and malformed hub answers (issue 11): nothing a server says becomes a path unchecked,
nothing outside the cache is created, and each case ends in one exit-2 message, no traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import invoke, invoke_json

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
    return seen - {"hf", "hf/hub"}  # the cache itself (and HF_HOME above it) may come to be


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
    proc = invoke("download", "tiny", "--source", hub.url)
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
        for build in (cache.blob, cache.partial, cache.lock):
            with pytest.raises(ValueError):
                build(bad)


# --- malformed answers (item 8): one exit-2 message naming the source, never a traceback -------


def _drop_size(entries: Any) -> Any:
    for entry in entries:
        entry.pop("size", None)
    return entries


def _string_size(entries: Any) -> Any:
    for entry in entries:
        if entry.get("type") == "file":
            entry["size"] = "12 MB"
    return entries


def _empty_lfs_oid(entries: Any) -> Any:
    for entry in entries:
        if "lfs" in entry:
            entry["lfs"]["oid"] = ""
    return entries


MALFORMED = {
    "tree-not-a-list": (TREE, {"answer": {"files": "nope"}}),
    "tree-entry-without-size": (TREE, {"edit": _drop_size}),
    "tree-entry-string-size": (TREE, {"edit": _string_size}),
    "tree-empty-lfs-oid": (TREE, {"edit": _empty_lfs_oid}),
    "model-info-not-an-object": ("/api/models/org/tiny/revision/*", {"answer": ["a", "list"]}),
    "model-info-redirect-loop": (
        "/api/models/org/tiny/revision/*",
        {"redirect": "/api/models/org/tiny/revision/main"},
    ),
    "file-redirect-loop": ("*config.json", {"redirect": "/org/tiny/resolve/main/config.json"}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_answers_are_one_clear_message(hub, tiny, tmp_path, case):
    pattern, fault = MALFORMED[case]
    hub.fault(pattern, **fault)
    before = _around(tmp_path)
    proc = invoke("download", "tiny", "--source", hub.url)
    assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert hub.url.split("//")[1] in proc.stderr, proc.stderr  # names the source
    assert _around(tmp_path) == before


# --- a ModelScope listing without hashes (item 6) ------------------------------------------------


def _no_sha(payload: Any) -> Any:
    for entry in payload["Data"]["Files"]:
        entry["Sha256"] = ""
    return payload


def test_modelscope_listing_without_hashes_is_recorded_and_verified_as_unverified(hub, tiny):
    hub.fault("/api/v1/models/org/tiny/repo/files", edit=_no_sha)
    hub.fault("*model-00002-of-00002.safetensors", corrupt=True)  # wrong bytes, nothing to see it
    rc, out = invoke_json("download", "tiny", "--source", "modelscope")
    assert rc == 0, out
    assert all(f.get("unverified") is True for f in out["files"]), out["files"]
    lock = Path(out["lock_file"]).read_text()
    assert lock.count("unverified = true") == len(out["files"])
    rc, checked = invoke_json("verify", "tiny")
    assert rc == 0, checked
    assert sorted(checked["unverified"]) == sorted(f["path"] for f in out["files"])
    assert {c["status"] for c in checked["checks"]} == {"unverified"}
    text = invoke("verify", "tiny")
    assert "unverified" in text.stdout and "no sha256" in text.stdout


def test_modelscope_listing_with_a_malformed_hash_is_refused(hub, tiny, tmp_path):
    def bad(payload: Any) -> Any:
        payload["Data"]["Files"][0]["Sha256"] = "../../x"
        return payload

    hub.fault("/api/v1/models/org/tiny/repo/files", edit=bad)
    proc = invoke("download", "tiny", "--source", "modelscope")
    _assert_refused(proc, "Sha256", "Nothing was downloaded")


def test_a_transient_5xx_on_the_metadata_call_is_tried_again(hub, tiny):
    """Item 10: file transfers retried 5xx, the metadata calls did not."""
    fault = hub.fault("/api/models/org/tiny/revision/*", status=503, fail_first=2)
    rc, out = invoke_json("download", "tiny", "--source", hub.url)
    assert rc == 0, out
    assert fault.hits == 2 and out["commit"] == tiny.commit


def test_a_lasting_5xx_on_the_metadata_call_is_one_message(hub, tiny):
    hub.fault("/api/models/org/tiny/revision/*", status=503, fail_first=100)
    proc = invoke("download", "tiny", "--source", hub.url)
    _assert_refused(proc, "503")


def test_a_lock_with_a_bad_revision_is_refused_before_any_transfer(hub, tiny, tmp_path):
    """Item 10: it was refused only after the whole download."""
    rc, out = invoke_json("download", "tiny", "--source", hub.url)
    assert rc == 0, out
    lock = Path(out["lock_file"])
    lock.write_text(lock.read_text().replace('revision = "main"', 'revision = "../../x"', 1))
    shutil.rmtree(tmp_path / "hf")
    hub.reset_counters()
    proc = invoke("download", "tiny", "--source", hub.url)
    _assert_refused(proc, "../../x")
    assert hub.bytes_sent == 0
