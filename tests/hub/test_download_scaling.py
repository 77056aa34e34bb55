"""Issue 17: a download's bookkeeping is per file (no rescans of the repo) and its fsyncs are the
file's, then each folder's once. Run against the local hub with the real clients; the only
thing wrapped is os.fsync / HfCache.blob, to count calls (each still does its real work)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from provision.hub import cache as cache_module
from provision.hub import download_profile
from provision.hub import transfer as transfer_module
from provision.profiles import load_profile
from tests.hub import helpers
from tests.servers.hub import HubServer

FILES = 60


@pytest.fixture
def many(hub: HubServer, hub_env: dict[str, str], tmp_path: Path) -> tuple[str, int]:
    """org/many: FILES small files (plus the three make_repo adds), profile `many`."""
    shards = {f"tile-{i:04d}.bin": 1000 + i for i in range(FILES)}
    folder = helpers.make_repo(tmp_path / "src" / "many", shards)
    hub.add_repo("org/many", folder)
    helpers.write_profile(tmp_path / "profiles", "many", "org/many")
    return "many", FILES + 3


def _download(hub: HubServer, name: str):
    return download_profile(load_profile(name), source=hub.url, progress=False)


def test_bookkeeping_is_linear_in_the_file_count(hub, many, monkeypatch):
    name, count = many
    calls = {"blob": 0}
    real_blob = cache_module.HfCache.blob

    def counting_blob(self, etag):
        calls["blob"] += 1
        return real_blob(self, etag)

    monkeypatch.setattr(cache_module.HfCache, "blob", counting_blob)
    result = _download(hub, name)
    assert result.files_fetched == count
    # Per file: the plan, the job and its link each build the path once. The old code rebuilt
    # every file's path for every finished file (count * count = 3969 here).
    assert calls["blob"] <= 4 * count, calls
    snapshot = result.snapshot
    assert all((snapshot / f.path).is_symlink() for f in result.files)
    assert {f.path for f in result.files} >= {f"tile-{i:04d}.bin" for i in range(FILES)}


def test_each_file_is_synced_and_its_folder_once(hub, many, monkeypatch):
    name, count = many
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(transfer_module.os, "fsync", recording_fsync)
    result = _download(hub, name)
    blobs = result.snapshot.parent.parent / "blobs"
    folder_syncs = [p for p in synced if Path(p) == blobs]
    file_syncs = [p for p in synced if Path(p).parent == blobs]
    assert len(folder_syncs) == 1, folder_syncs  # was one per file (63)
    # Every blob's bytes were synced before its rename (under its partial name).
    assert len(file_syncs) == count
    assert all(p.endswith(cache_module.PARTIAL_SUFFIX) for p in file_syncs)
    # And nothing else per file: the stamps beside the cache are hints, written without fsync
    # (the lock, ref and tree files add a few).
    assert len(synced) <= count + 10, len(synced)
    placed = sorted(p.name for p in blobs.iterdir())
    assert len(placed) == count and not any(n.endswith(cache_module.PARTIAL_SUFFIX) for n in placed)


def test_leftovers_of_a_killed_hf_download_are_found_from_one_listing(tmp_path):
    cache = cache_module.HfCache(tmp_path / "hub", "org/x")
    blobs = cache.storage / "blobs"
    blobs.mkdir(parents=True)
    a, b, c = "a" * 40, "b" * 40, "c" * 64  # blob ids as the hub gives them
    for name in (f"{a}.incomplete", f"{a}.1a2b.incomplete", b, f"{c}.provision-partial"):
        (blobs / name).write_bytes(b"x")
    found = cache.all_leftovers()
    assert found == {a: [blobs / f"{a}.1a2b.incomplete", blobs / f"{a}.incomplete"]}
    assert cache_module.HfCache(tmp_path / "none", "org/x").all_leftovers() == {}


def test_each_file_is_linked_and_stamped_while_the_others_still_transfer(
    hub, hub_env, tmp_path, monkeypatch
):
    """A placed file's snapshot link and stamp are made by the worker that placed it, while a
    slow file is still coming: the old code made them in the main thread after the last
    transfer had ended (a serial tail that grew with the file count)."""
    from provision.hub import stamps

    slow = "big.safetensors"
    shards = {slow: 600_000, **{f"tile-{i:02d}.bin": 2000 + i for i in range(12)}}
    folder = helpers.make_repo(tmp_path / "src" / "mixed", shards)
    hub.add_repo("org/mixed", folder)
    helpers.write_profile(tmp_path / "profiles", "mixed", "org/mixed")
    hub.fault(slow, throttle=500_000)  # 1.2 s for the big file, the others at full speed
    key = f"org/mixed/{slow}"
    during: dict[str, list[bool]] = {"link": [], "stamp": []}
    real_link, real_record = cache_module.HfCache.link, stamps.record

    def in_flight() -> bool:  # not all of it sent yet (or not started: it is one of 16)
        return hub.bytes_for(key) < shards[slow]

    def link(self, commit, path, etag):
        during["link"].append(in_flight())
        return real_link(self, commit, path, etag)

    def record(root, target, sha256):
        during["stamp"].append(in_flight())
        return real_record(root, target, sha256)

    monkeypatch.setattr(cache_module.HfCache, "link", link)
    monkeypatch.setattr(stamps, "record", record)
    result = _download(hub, "mixed")
    assert result.files_fetched == len(shards) + 3
    assert hub.bytes_for(key) == shards[slow]
    # Every file but the slow one was linked and stamped while the slow one was still sent.
    assert sum(during["link"]) >= len(shards) - 1, during
    assert sum(during["stamp"]) >= len(shards) - 1, during
    assert all((result.snapshot / f.path).is_symlink() for f in result.files)


def test_files_come_through_the_listings_client_with_one_tls_context(hub, tiny, monkeypatch):
    """A Hugging Face download builds one TLS context (huggingface_hub's shared client, which
    the listing uses and the transfers reuse), not a second one for a client of its own: each
    loads the CA bundle again (~50 ms of CPU per run, issue 17). The shared client stays open
    for whoever uses huggingface_hub next in the process."""
    import httpx2._transports.default as transport
    from huggingface_hub.utils import close_session, get_session

    built: list[object] = []
    real = transport.create_ssl_context

    def counting(*args, **kwargs):
        built.append(kwargs.get("verify"))
        return real(*args, **kwargs)

    close_session()  # a fresh process: no client yet
    monkeypatch.setattr(transport, "create_ssl_context", counting)
    result = _download(hub, tiny.profile)
    assert result.files_fetched == 5 and result.bytes_fetched == tiny.size
    assert len(built) == 1, built
    assert not get_session().is_closed
    gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert len(gets) == 5


def test_each_folder_is_resolved_once_not_each_file(hub, many, monkeypatch):
    """The check that a file's path stays inside the snapshot resolves its folder (an lstat per
    component): once per folder per download now, where it was twice per file at planning and
    twice again at linking (4 * 63 here; most of the planning of a 1000-file repository)."""
    name, count = many
    calls: list[Path] = []
    real_resolve = Path.resolve

    def counting(self, strict=False):
        calls.append(self)
        return real_resolve(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", counting)
    result = _download(hub, name)
    assert result.files_fetched == count
    in_snapshot = [p for p in calls if str(p).startswith(str(result.snapshot))]
    # The snapshot folder and its one subfolder ("sub"), once each.
    assert len(in_snapshot) <= 4, in_snapshot
    assert all((result.snapshot / f.path).is_symlink() for f in result.files)


def test_a_snapshot_folder_linked_outside_is_still_refused(hub, tiny, tmp_path):
    """Resolving each folder once keeps the check: a folder of the snapshot that is a symlink
    out of it (left there by anything) stops the download before a file is linked through it."""
    first = _download(hub, tiny.profile)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    sub = first.snapshot / "sub"
    for child in sub.iterdir():
        child.unlink()
    sub.rmdir()
    sub.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="is outside"):
        _download(hub, tiny.profile)
    assert list(outside.iterdir()) == []


def test_ref_and_tree_are_written_while_the_files_transfer(hub, hub_env, tmp_path, monkeypatch):
    """refs/main and trees/{commit}.json come from the listing alone: written (durably) while
    the files come, as huggingface_hub writes them before its files, not after the last one."""
    slow = "big.safetensors"
    folder = helpers.make_repo(tmp_path / "src" / "meta", {slow: 400_000})
    commit = hub.add_repo("org/meta", folder)
    helpers.write_profile(tmp_path / "profiles", "meta", "org/meta")
    hub.fault(slow, throttle=400_000)  # about a second
    key = f"org/meta/{slow}"
    during: list[bool] = []
    real_ref, real_tree = cache_module.HfCache.write_ref, cache_module.HfCache.write_tree

    def write_ref(self, revision, sha):
        during.append(hub.bytes_for(key) < 400_000)
        return real_ref(self, revision, sha)

    def write_tree(self, sha, files):
        during.append(hub.bytes_for(key) < 400_000)
        return real_tree(self, sha, files)

    monkeypatch.setattr(cache_module.HfCache, "write_ref", write_ref)
    monkeypatch.setattr(cache_module.HfCache, "write_tree", write_tree)
    result = _download(hub, "meta")
    assert during == [True, True]
    storage = result.snapshot.parent.parent
    assert (storage / "refs" / "main").read_text() == commit
    tree = json.loads((storage / "trees" / f"{commit}.json").read_text())
    assert set(tree["files"]) == {f.path for f in result.files}


def test_a_tree_that_cannot_be_written_still_fails_the_download(hub, tiny, hub_env, tmp_path):
    """Written in a thread of its own, the tree's failure still reaches the caller."""
    storage = tmp_path / "hf" / "hub" / "models--org--tiny"
    storage.mkdir(parents=True)
    (storage / "trees").write_text("not a folder")
    with pytest.raises(OSError):
        _download(hub, tiny.profile)


def test_a_file_waiting_for_its_fsync_does_not_hold_a_transfer_slot(
    hub, hub_env, tmp_path, monkeypatch
):
    """With 2 workers, at most 2 files transfer at once, and a fetched file waiting for its fsync
    lets the next transfer start: here each fsync waits until all 4 files were asked for. The
    old code fetched and synced in one worker, so 2 files in fsync stopped every transfer (the
    fsyncs would wait forever; they give up after 10 s and the check fails)."""
    import threading

    shards = {f"tile-{i}.bin": 3000 + i for i in range(4)}
    folder = tmp_path / "src" / "four"
    folder.mkdir(parents=True)
    for name, size in shards.items():
        (folder / name).write_bytes(os.urandom(size))
    hub.add_repo("org/four", folder)
    helpers.write_profile(tmp_path / "profiles", "four", "org/four")
    asked = threading.Event()
    waited: list[bool] = []
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real_fsync, real_fetch = os.fsync, transfer_module.Fetcher._fetch

    def fetch(self, job):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            return real_fetch(self, job)
        finally:
            with lock:
                in_flight[0] -= 1
            gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
            if len(gets) == len(shards):
                asked.set()

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(cache_module.PARTIAL_SUFFIX):
            waited.append(asked.wait(10))
        return real_fsync(fd)

    monkeypatch.setattr(transfer_module.Fetcher, "_fetch", fetch)
    monkeypatch.setattr(transfer_module.os, "fsync", fsync)
    result = download_profile(load_profile("four"), source=hub.url, progress=False, workers=2)
    assert result.files_fetched == len(shards)
    assert waited == [True] * len(shards), waited
    assert most[0] <= 2, most
