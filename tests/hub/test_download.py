"""`provision download` / `verify` against the local hub, with the real clients for metadata."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from provision.errors import ProvisionError
from provision.hub import download_profile, model_record, verify_profile
from provision.hub.errors import SourceFailed
from provision.profiles import load_profile
from tests.cli_helpers import invoke, invoke_json, result_of
from tests.conftest import remount_read_only
from tests.hub import helpers
from tests.servers.hub import HubServer


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot_matches(snapshot: Path, folder: Path) -> None:
    for source in folder.rglob("*"):
        if source.is_file():
            placed = snapshot / source.relative_to(folder)
            assert placed.is_symlink(), placed
            assert _sha(placed) == _sha(source), placed


def _no_partials(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*provision-partial")]


def test_full_download_cache_layout_lock_record_and_offline_reuse(hub, tiny, tmp_path):
    rc, out = invoke_json("download", "tiny", "--source", "auto")
    assert rc == 0, out
    assert out["source"] == hub.url and "first reachable" in out["reason"]
    assert out["commit"] == tiny.commit and out["revision"] == "main"
    assert out["bytes_fetched"] == tiny.size and out["bytes_reused"] == 0
    snapshot = Path(out["snapshot"])
    assert snapshot == tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots" / tiny.commit
    _snapshot_matches(snapshot, tiny.folder)
    storage = snapshot.parent.parent
    assert (storage / "refs" / "main").read_text() == tiny.commit
    assert (storage / "trees" / f"{tiny.commit}.json").exists()
    assert _no_partials(tmp_path) == []

    record = model_record(tmp_path / "locks" / "pylock.tiny.toml")
    assert record["commit"] == tiny.commit and record["repo_id"] == "org/tiny"
    recorded = {f["path"]: (f["size"], f["sha256"]) for f in record["files"]}
    for source in tiny.folder.rglob("*"):
        if source.is_file():
            rel = source.relative_to(tiny.folder).as_posix()
            assert recorded[rel] == (source.stat().st_size, _sha(source))

    # huggingface_hub itself finds the snapshot with no network at all.
    hub.stop()
    code = "from huggingface_hub import snapshot_download; print(snapshot_download('org/tiny'))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == snapshot


def test_second_download_fetches_nothing(hub, tiny):
    profile = load_profile("tiny")
    download_profile(profile, source=hub.url, progress=False)
    hub.reset_counters()
    again = download_profile(profile, source=hub.url, progress=False)
    assert again.bytes_fetched == 0 and again.files_reused == len(again.files)
    assert hub.bytes_sent == 0


def test_include_and_exclude(hub, tiny):
    profile = load_profile("tiny")
    result = download_profile(
        profile, source=hub.url, include=["*.json", "sub/"], exclude=["tokenizer*"], progress=False
    )
    assert sorted(f.path for f in result.files) == ["config.json", "sub/notes.txt"]
    with pytest.raises(ProvisionError, match="No file of org/tiny matches"):
        download_profile(profile, source=hub.url, include=["*.gguf"], progress=False)


def test_cut_connections_resume_with_range_and_send_nothing_twice(hub, tiny):
    hub.fault("*00001-of-00002*", cut_after=700_000, times=3)
    result = download_profile(load_profile("tiny"), source=hub.url, progress=False)
    shard = "org/tiny/model-00001-of-00002.safetensors"
    assert hub.bytes_sent_per_path[shard] == 3_000_000  # every byte exactly once
    ranges = [r.range for r in hub.requests if r.file == shard]
    assert ranges == [None, "bytes=700000-", "bytes=1400000-", "bytes=2100000-"]
    assert result.bytes_fetched == tiny.size


def test_5xx_for_a_while_is_waited_out(hub, tiny):
    hub.fault("*00002-of-00002*", fail_for=1.0, status=502)
    result = download_profile(load_profile("tiny"), source=hub.url, progress=False)
    assert result.bytes_fetched == tiny.size
    assert any(r.status == 502 for r in hub.requests)


def test_corrupted_bytes_are_detected_and_fetched_again(hub, tiny, tmp_path):
    hub.fault("*00001-of-00002*", corrupt=True, times=1)
    result = download_profile(load_profile("tiny"), source=hub.url, progress=False)
    shard = "org/tiny/model-00001-of-00002.safetensors"
    assert hub.bytes_sent_per_path[shard] == 2 * 3_000_000
    assert result.bytes_fetched == tiny.size + 3_000_000
    _snapshot_matches(result.snapshot, tiny.folder)


def test_corruption_that_persists_is_one_clear_error_and_places_nothing(hub, tiny, tmp_path):
    hub.fault("*00001-of-00002*", corrupt=True)
    proc = invoke("download", "tiny", "--source", hub.url)
    assert proc.returncode == 2, proc.stderr
    assert "failed its check 3 times" in proc.stderr and "Traceback" not in proc.stderr
    blobs = tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs"
    expected = _sha(tiny.folder / "model-00001-of-00002.safetensors")
    assert not (blobs / expected).exists()


def test_a_small_plain_git_file_is_checked_against_its_git_blob_id(hub, tmp_path, hub_env):
    folder = helpers.make_repo(tmp_path / "src" / "plain", {"weights.safetensors": 1000})
    hub.add_repo("org/plain", folder)
    helpers.write_profile(tmp_path / "profiles", "plain", "org/plain")
    hub.fault("config.json", corrupt=True, times=1)
    result = download_profile(load_profile("plain"), source=hub.url, progress=False)
    assert (
        hub.bytes_sent_per_path["org/plain/config.json"]
        == 2 * (folder / "config.json").stat().st_size
    )
    _snapshot_matches(result.snapshot, folder)


def test_a_failing_source_hands_over_to_the_next_one(hub, tiny, tmp_path, monkeypatch):
    with HubServer(tmp_path / "second-root") as second:
        second.add_repo("org/tiny", tiny.folder)
        # The first source sends 1 MB of the big shard, then answers 503 to every file request.
        hub.fault("*00001-of-00002*", cut_after=1_000_000, times=1)
        hub.fault("*00001-of-00002*", fail_first=10**6, skip=1, status=503)
        monkeypatch.setenv("PROVISION_SOURCES", f"{hub.url},{second.url}")
        monkeypatch.setenv("PROVISION_RETRIES", "2")
        rc, out = invoke_json("download", "tiny")
        assert rc == 0, out
        assert out["source"] == second.url
        assert out["fallbacks"][0]["source"] == hub.url and "kept failing" in out["reason"]
        shard = "org/tiny/model-00001-of-00002.safetensors"
        # The second source resumed the first one's partial file: only the rest came from it.
        assert hub.bytes_sent_per_path[shard] == 1_000_000
        assert second.bytes_sent_per_path[shard] == 2_000_000
        _snapshot_matches(Path(out["snapshot"]), tiny.folder)


def test_auto_skips_a_source_that_lacks_the_repo(hub, tiny, tmp_path, monkeypatch):
    with HubServer(tmp_path / "empty-root") as empty:
        monkeypatch.setenv("PROVISION_SOURCES", f"{empty.url},{hub.url}")
        result = download_profile(load_profile("tiny"), progress=False)
        assert result.source.endpoint == hub.url
        assert f"{empty.url} has no repository org/tiny" in result.reason


def test_two_processes_downloading_one_repo_cooperate(hub, tiny, tmp_path):
    hub.fault("*.safetensors", throttle=2_000_000)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "provision", "--json", "download", "tiny", "--source", hub.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    outs = [result_of(SimpleNamespace(stdout=out, returncode=0)) for out, _ in results]
    # Each file crossed the wire once in total, whichever process fetched it.
    assert hub.bytes_sent == tiny.size
    assert sum(o["bytes_fetched"] for o in outs) == tiny.size
    _snapshot_matches(Path(outs[0]["snapshot"]), tiny.folder)
    assert verify_profile(load_profile("tiny")).ok


def test_killed_download_resumes_and_the_server_sends_only_the_missing_bytes(
    hub, tmp_path, hub_env
):
    folder = helpers.make_repo(tmp_path / "src" / "big", {"model.safetensors": 12_000_000})
    hub.add_repo("org/big", folder)
    helpers.write_profile(tmp_path / "profiles", "big", "org/big")
    hub.fault("model.safetensors", throttle=3_000_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision", "download", "big", "--source", hub.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blobs = tmp_path / "hf" / "hub" / "models--org--big" / "blobs"
    partial = blobs / (_sha(folder / "model.safetensors") + ".provision-partial")
    helpers.wait_for(lambda: partial.exists() and partial.stat().st_size > 4_000_000, 60)
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait(timeout=10)
    hub.wait_idle()
    kept = partial.stat().st_size
    assert 4_000_000 < kept < 12_000_000
    first_run = hub.bytes_for("org/big/model.safetensors")

    hub.clear_faults()
    hub.reset_counters()
    rc, out = invoke_json("download", "big", "--source", hub.url)
    assert rc == 0, out
    assert hub.bytes_for("org/big/model.safetensors") == 12_000_000 - kept
    assert out["bytes_reused"] >= kept
    resumed = [r for r in hub.requests if r.file == "org/big/model.safetensors"]
    assert [r.range for r in resumed] == [f"bytes={kept}-"]
    # What the first run sent beyond the kept bytes was in flight when it died.
    assert first_run - kept < 10 * 2**20  # under one of huggingface_hub's 10 MiB chunks
    assert not partial.exists()
    _snapshot_matches(Path(out["snapshot"]), folder)


def test_a_partial_file_left_by_hf_download_is_adopted(hub, tmp_path, hub_env):
    # huggingface_hub writes in 10 MiB pieces and never resumes after a kill; its leftover
    # `<etag>.<id>.incomplete` is a prefix of the blob, so provision continues from it.
    size = 24_000_000
    folder = helpers.make_repo(tmp_path / "src" / "big", {"model.safetensors": size})
    commit = hub.add_repo("org/big", folder)
    helpers.write_profile(tmp_path / "profiles", "big", "org/big")
    hub.fault("model.safetensors", throttle=8_000_000)
    hf = subprocess.Popen(
        [str(Path(sys.executable).parent / "hf"), "download", "org/big"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blobs = tmp_path / "hf" / "hub" / "models--org--big" / "blobs"
    # hf renames or removes its `.incomplete` file while we look: a file that glob listed may be
    # gone by the time it is measured (seen under load), so a vanished file counts as not there.
    helpers.wait_for(lambda: any(s >= 10 * 2**20 for s in helpers.sizes(blobs, "*.incomplete")), 60)
    hf.kill()
    hf.wait(timeout=10)
    hub.wait_idle()
    (leftover,) = blobs.glob("*.incomplete")
    kept = leftover.stat().st_size
    assert kept < size
    hub.clear_faults()
    hub.reset_counters()
    result = download_profile(load_profile("big"), source=hub.url, progress=False)
    assert result.commit == commit
    assert hub.bytes_for("org/big/model.safetensors") == size - kept
    assert list(blobs.glob("*.incomplete")) == []  # the leftover became the blob
    _snapshot_matches(result.snapshot, folder)


def test_gated_repo_names_the_license_page_and_how_to_give_a_token(hub, tmp_path, hub_env):
    folder = helpers.make_repo(tmp_path / "src" / "gated", {"model.safetensors": 10_000})
    hub.add_repo("org/gated", folder, gated=True)
    helpers.write_profile(tmp_path / "profiles", "gated", "org/gated", gated=True)
    proc = invoke("download", "gated", "--source", hub.url)
    assert proc.returncode == 2
    assert f"{hub.url}/org/gated" in proc.stderr
    assert "HF_TOKEN" in proc.stderr and "hf auth login" in proc.stderr
    assert "Traceback" not in proc.stderr

    token = "hf_secret_token_for_tests"
    stranger = invoke("download", "gated", "--source", hub.url, env={"HF_TOKEN": token})
    assert stranger.returncode == 2 and "not on its access list" in stranger.stderr

    hub.grant(token, "org/gated")
    ok = invoke("download", "gated", "--source", hub.url, env={"HF_TOKEN": token})
    assert ok.returncode == 0, ok.stderr
    # The token went to the hub, and nowhere else.
    assert all(token not in r.path for r in hub.requests)
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and "hub-root" not in path.parts:
            assert token.encode() not in path.read_bytes(), path
    # Files already in the cache need no token: only a request for a file is refused.
    again = invoke("download", "gated", "--source", hub.url)
    assert again.returncode == 0, again.stderr


def test_missing_repo_and_missing_revision(hub, tiny, tmp_path):
    helpers.write_profile(tmp_path / "profiles", "ghost", "org/ghost")
    proc = invoke("download", "ghost", "--source", hub.url)
    assert proc.returncode == 2
    assert "Repository org/ghost was not found" in proc.stderr and "Traceback" not in proc.stderr

    proc = invoke("download", "tiny", "--source", hub.url, "--revision", "v9")
    assert proc.returncode == 2
    assert "Revision 'v9' of org/tiny does not exist" in proc.stderr

    # A revision is a file name under refs/ in the cache: one that climbs out is refused first.
    for bad in ("../../escape", "/etc/x", "a//b"):
        proc = invoke("download", "tiny", "--source", hub.url, "--revision", bad)
        assert proc.returncode == 2 and "is not a branch, tag or commit name" in proc.stderr
    assert not list(Path(os.environ["HF_HOME"]).rglob("escape"))

    # The record goes into a PEP 751 lock: a name `provision lock` would refuse is refused here.
    proc = invoke("download", "tiny", "--source", hub.url, "--lock", str(tmp_path / "my.lock"))
    assert proc.returncode == 2 and "is not a PEP 751 name" in proc.stderr
    assert not (tmp_path / "my.lock").exists()


def test_a_url_that_is_not_a_hub(tiny, tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<html>hello</html>")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def handler(*args, **kwargs):
        return Quiet(*args, directory=str(tmp_path / "www"), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        proc = invoke("download", "tiny", "--source", url)
        assert proc.returncode == 2
        assert f"{url} does not answer like a Hugging Face hub" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        server.shutdown()
        server.server_close()

    closed = f"http://127.0.0.1:{server.server_address[1]}"
    proc = invoke("download", "tiny", "--source", closed)
    assert proc.returncode == 2 and f"Cannot reach {closed}" in proc.stderr


def test_a_file_name_that_escapes_the_cache_is_refused(hub, tiny, tmp_path):
    profile = load_profile("tiny")
    first = download_profile(profile, source=hub.url, progress=False)
    before = {p: p.read_bytes() for p in first.snapshot.rglob("*") if p.is_file()}
    evil = helpers.make_repo(tmp_path / "src" / "evil", {"model.safetensors": 1000})
    hub.add_repo("org/tiny", evil, revision="evil", extra_files={"../../../../escaped.txt": b"x"})
    proc = invoke("download", "tiny", "--source", hub.url, "--revision", "evil")
    assert proc.returncode == 2
    assert "'../../../../escaped.txt'" in proc.stderr and "outside the cache" in proc.stderr
    assert not list(tmp_path.rglob("escaped.txt"))
    assert {p: p.read_bytes() for p in first.snapshot.rglob("*") if p.is_file()} == before
    assert verify_profile(profile).ok  # the lock still records the good download


def test_verify_finds_missing_and_wrong_files(hub, tiny, tmp_path):
    result = download_profile(load_profile("tiny"), source=hub.url, progress=False)
    assert invoke("verify", "tiny").returncode == 0
    shard = result.snapshot / "model-00001-of-00002.safetensors"
    blob = shard.resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    (result.snapshot / "sub" / "notes.txt").resolve().unlink()
    rc, out = invoke_json("verify", "tiny")
    assert rc == 1
    assert out["missing"] == ["sub/notes.txt"]
    assert out["wrong"] == ["model-00001-of-00002.safetensors"]
    human = invoke("verify", "tiny")
    assert human.returncode == 1 and "sub/notes.txt: missing" in human.stdout

    # A second download repairs what verify found (the damaged blob has the right size, so it is
    # trusted by name; remove it as verify's hint suggests re-fetching).
    blob.unlink()
    download_profile(load_profile("tiny"), source=hub.url, progress=False)
    assert verify_profile(load_profile("tiny")).ok


def test_verify_without_a_record_is_a_usage_error(tiny, tmp_path):
    proc = invoke("verify", "tiny")
    assert proc.returncode == 2 and "provision download tiny" in proc.stderr


def test_the_lock_pins_the_commit_until_a_revision_is_asked_for(hub, tiny, tmp_path):
    profile = load_profile("tiny")
    download_profile(profile, source=hub.url, progress=False)
    newer = helpers.make_repo(tmp_path / "src" / "newer", {"model.safetensors": 5000}, seed=7)
    new_commit = hub.add_repo("org/tiny", newer)  # main moves on
    again = download_profile(profile, source=hub.url, progress=False)
    assert again.commit == tiny.commit and again.revision == "main"
    moved = download_profile(profile, source=hub.url, revision="main", progress=False)
    assert moved.commit == new_commit
    assert model_record(tmp_path / "locks" / "pylock.tiny.toml")["commit"] == new_commit


def test_modelscope_source_uses_its_own_verified_layout(hub, tiny, tmp_path):
    hub.fault("*00002-of-00002*", corrupt=True, times=1)
    hub.fault("*00001-of-00002*", cut_after=1_000_000, times=1)
    rc, out = invoke_json("download", "tiny", "--source", "modelscope")
    assert rc == 0, out
    # The commit it got is recorded, as for Hugging Face (issue 14, item 6): from the listing's
    # per-file "Revision" (a commit id), the branch being named "master" on ModelScope.
    assert out["commit"] == tiny.commit
    assert model_record(tmp_path / "locks" / "pylock.tiny.toml")["commit"] == tiny.commit
    snapshot = tmp_path / "ms" / "models" / "org--tiny" / "snapshots" / "master"
    assert Path(out["snapshot"]) == snapshot
    for source in tiny.folder.rglob("*"):
        if source.is_file():
            assert _sha(snapshot / source.relative_to(tiny.folder)) == _sha(source)
    per = hub.bytes_sent_per_path
    assert per["org/tiny/model-00001-of-00002.safetensors"] == 3_000_000
    assert per["org/tiny/model-00002-of-00002.safetensors"] == 2 * 2_000_000
    assert invoke("verify", "tiny").returncode == 0
    # modelscope's own client finds it offline.
    code = (
        "from modelscope.hub.snapshot_download import snapshot_download; "
        "print(snapshot_download('org/tiny', local_files_only=True))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]) == snapshot


def test_a_local_folder_and_a_local_hf_cache_as_sources(hub, tiny, tmp_path):
    profile = load_profile("tiny")
    from_folder = download_profile(
        profile, source=str(tiny.folder), hf_cache=tmp_path / "c1", progress=False, record=False
    )
    _snapshot_matches(from_folder.snapshot, tiny.folder)
    assert from_folder.source.kind == "local" and len(from_folder.commit) == 40
    assert (
        tmp_path / "c1" / "models--org--tiny" / "refs" / "main"
    ).read_text() == from_folder.commit

    fetched = download_profile(profile, source=hub.url, progress=False, record=False)
    from_cache = download_profile(
        profile,
        source=str(fetched.cache_dir),
        hf_cache=tmp_path / "c2",
        progress=False,
        record=False,
    )
    assert from_cache.commit == tiny.commit
    _snapshot_matches(from_cache.snapshot, tiny.folder)


def test_explicit_source_failure_is_raised_as_is(hub, tiny, monkeypatch):
    monkeypatch.setenv("PROVISION_RETRIES", "1")
    hub.fault("*.safetensors", fail_first=10**6)
    with pytest.raises(SourceFailed, match="kept failing"):
        download_profile(load_profile("tiny"), source=hub.url, progress=False)


def test_the_record_keeps_what_the_lock_stage_wrote(hub, tiny, tmp_path):
    from provision.lock.lockfile import set_tool_section

    lock = tmp_path / "locks" / "pylock.tiny.toml"
    set_tool_section(
        lock,
        "model",
        {
            "source": "huggingface",
            "repo_id": "org/tiny",
            "revision": "main",
            "modelscope_repo_id": "org/tiny",
        },
    )
    download_profile(load_profile("tiny"), source="auto", progress=False)
    record = model_record(lock)
    assert record["modelscope_repo_id"] == "org/tiny"  # the lock stage's key survives
    assert record["source"] == hub.url and record["commit"] == tiny.commit
    assert len(record["files"]) == 5


def test_a_cache_that_cannot_be_written_is_named_not_called_full(hub, tiny, tmp_path, read_only):
    """A file in the way, or a read-only mount (0 bytes free), is not reported as a full disk."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    for home, reason in [
        (blocker / "hf", "is a file, not a folder"),
        (read_only / "hf", "read-only"),
    ]:
        proc = invoke("download", "tiny", "--source", hub.url, env={"HF_HOME": str(home)})
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2, err
        assert "cannot be used" in err and reason in err and "HF_HOME" in err
        assert "Not enough free space" not in err and "Traceback" not in err


def test_a_complete_cache_on_a_read_only_volume_is_used_as_it_is(hub, tiny, tmpfs_volume):
    """A lab's shared, read-only HF cache that already holds the model: nothing to write."""
    home = {"HF_HOME": str(tmpfs_volume / "hf")}
    first = invoke("download", "tiny", "--source", hub.url, env=home)
    assert first.returncode == 0, first.stderr
    remount_read_only(tmpfs_volume)
    again = invoke("download", "tiny", "--source", hub.url, env=home)
    assert again.returncode == 0, again.stderr
