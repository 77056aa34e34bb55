"""The local hub against the real clients: what they request, and the faults it injects."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from tests.hub import helpers
from tests.servers.hub import HubServer

pytestmark = pytest.mark.usefixtures("hub_env")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hf_download(repo_id: str, cache: Path, **kwargs) -> Path:
    """huggingface_hub's snapshot_download in a fresh process (HF_ENDPOINT is read at import)."""
    code = (
        "import sys, json; from huggingface_hub import snapshot_download; "
        f"print(snapshot_download({repo_id!r}, cache_dir={str(cache)!r}, "
        "**json.loads(sys.argv[1])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def test_huggingface_hub_downloads_a_snapshot_with_the_cache_layout(hub, tiny, tmp_path):
    snapshot = _hf_download("org/tiny", tmp_path / "cache")
    assert snapshot.name == tiny.commit
    for source in tiny.folder.rglob("*"):
        if source.is_file():
            rel = source.relative_to(tiny.folder)
            assert _sha(snapshot / rel) == _sha(source)
    storage = snapshot.parent.parent
    assert (storage / "refs" / "main").read_text() == tiny.commit
    # LFS files are stored under their sha256, plain files under git's blob id.
    shard = snapshot / "model-00001-of-00002.safetensors"
    assert os.readlink(shard).endswith(_sha(tiny.folder / shard.name))
    assert hub.bytes_sent == tiny.size


def test_modelscope_downloads_the_same_repo(hub, tiny, tmp_path):
    code = (
        "from modelscope.hub.snapshot_download import snapshot_download; "
        f"print(snapshot_download('org/tiny', cache_dir={str(tmp_path / 'ms')!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip().splitlines()[-1])
    assert snapshot == tmp_path / "ms" / "models" / "org--tiny" / "snapshots" / "master"
    assert _sha(snapshot / "sub" / "notes.txt") == _sha(tiny.folder / "sub" / "notes.txt")
    paths = [r.path for r in hub.requests]
    assert any(p.startswith("/api/v1/models/org/tiny/repo/files?") for p in paths)


def test_cut_connection_is_counted_and_the_client_retries(hub, tiny, tmp_path):
    fault = hub.fault("*00001-of-00002*", cut_after=1_000_000, times=1)
    _hf_download("org/tiny", tmp_path / "cache")
    assert fault.hits == 1
    shard = "org/tiny/model-00001-of-00002.safetensors"
    # huggingface_hub resumes only from 10 MiB boundaries: the first MB is sent twice.
    assert hub.bytes_sent_per_path[shard] == 3_000_000 + 1_000_000


def test_5xx_for_the_first_requests_then_success(hub, tiny, tmp_path):
    fault = hub.fault("*00002-of-00002*", fail_first=2, status=503)
    _hf_download("org/tiny", tmp_path / "cache")
    statuses = [
        r.status for r in hub.requests if (r.file or "").endswith("00002-of-00002.safetensors")
    ]
    assert statuses[:2] == [503, 503] and statuses[-1] == 200
    assert fault.hits == 2


def test_range_wrong_bytes_and_throttle(hub, tiny):
    url = f"{hub.url}/org/tiny/resolve/main/model-00002-of-00002.safetensors"
    original = (tiny.folder / "model-00002-of-00002.safetensors").read_bytes()
    with httpx2.Client() as client:
        part = client.get(url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.headers["Content-Range"] == "bytes 1000-1999/2000000"
        assert part.content == original[1000:2000]
        assert client.get(url, headers={"Range": "bytes=2000000-"}).status_code == 416
        head = client.head(url)
        assert head.headers["X-Repo-Commit"] == tiny.commit
        assert head.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(original).hexdigest()
        assert int(head.headers["Content-Length"]) == len(original)

        hub.fault("*00002-of-00002*", corrupt=True, times=1)
        bad = client.get(url).content
        assert len(bad) == len(original) and bad != original
        assert sum(a != b for a, b in zip(bad, original, strict=True)) == 1
        assert client.get(url).content == original  # times=1: the next answer is right

        hub.fault("*00002-of-00002*", throttle=1_000_000)
        started = time.monotonic()
        assert client.get(url).content == original
        assert time.monotonic() - started >= 1.7  # 2 MB at 1 MB/s


def test_errors_carry_the_hub_error_codes(hub, tiny):
    with httpx2.Client() as client:
        missing = client.get(f"{hub.url}/api/models/org/nope/revision/main")
        assert missing.headers["X-Error-Code"] == "RepoNotFound"
        rev = client.get(f"{hub.url}/api/models/org/tiny/revision/nope")
        assert (rev.status_code, rev.headers["X-Error-Code"]) == (404, "RevisionNotFound")
        entry = client.head(f"{hub.url}/org/tiny/resolve/main/nope.bin")
        assert entry.headers["X-Error-Code"] == "EntryNotFound"
        assert entry.headers["X-Repo-Commit"] == tiny.commit


def test_gated_repo_answers_401_then_403_then_the_file(hub, tmp_path):
    folder = helpers.make_repo(tmp_path / "g", {"model.safetensors": 1000})
    hub.add_repo("org/gated", folder, gated=True)
    url = f"{hub.url}/org/gated/resolve/main/model.safetensors"
    with httpx2.Client() as client:
        anonymous = client.get(url)
        assert (anonymous.status_code, anonymous.headers["X-Error-Code"]) == (401, "GatedRepo")
        stranger = client.get(url, headers={"Authorization": "Bearer hf_stranger"})
        assert (stranger.status_code, stranger.headers["X-Error-Code"]) == (403, "GatedRepo")
        hub.grant("hf_friend", "org/gated")
        friend = client.get(url, headers={"Authorization": "Bearer hf_friend"})
        assert friend.status_code == 200 and len(friend.content) == 1000
        info = client.get(f"{hub.url}/api/models/org/gated").json()
        assert info["gated"] == "manual"  # the metadata stays public, as on the real hub


def test_tree_pagination_follows_link_headers(hub, tiny, tmp_path):
    hub.tree_page_size = 2
    snapshot = _hf_download("org/tiny", tmp_path / "cache")
    assert (snapshot / "sub" / "notes.txt").exists()
    pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(pages) >= 3


def test_standalone_server_and_its_control_routes(tmp_path):
    root = tmp_path / "root"
    helpers.make_repo(root / "org" / "one", {"model.safetensors": 500_000})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.hub", str(root), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx2.Client() as client:
            assert client.get(f"{url}/api/models/org/one").json()["id"] == "org/one"
            client.post(f"{url}/_hub/faults", json={"pattern": "*.safetensors", "fail_first": 1})
            first = client.get(f"{url}/org/one/resolve/main/model.safetensors")
            second = client.get(f"{url}/org/one/resolve/main/model.safetensors")
            assert (first.status_code, second.status_code) == (503, 200)
            stats = client.get(f"{url}/_hub/stats").json()
            assert stats["per_path"]["org/one/model.safetensors"] == 500_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_counts_start_clean_per_server(tmp_path):
    with HubServer(tmp_path / "h") as server:
        assert server.bytes_sent == 0 and server.requests == []


def test_file_answers_are_not_held_back_by_nagle(hub: HubServer, tmp_path: Path, monkeypatch):
    """The hub's sockets set TCP_NODELAY, as the hubs' front servers do: with Nagle on, a file's
    body (sent after its headers) waited for the client's delayed ACK, ~40 ms per file GET that
    every downloader paid, hiding their own per-file costs (issue 17)."""
    import socket

    from tests.servers import hub as hub_module

    seen: list[int] = []
    real_setup = hub_module._Handler.setup

    def setup(self):
        real_setup(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(hub_module._Handler, "setup", setup)
    folder = helpers.make_repo(tmp_path / "src" / "nd", {"model.safetensors": 5000})
    hub.add_repo("org/nd", folder)
    with httpx2.Client() as client:
        got = client.get(f"{hub.url}/org/nd/resolve/main/model.safetensors")
    assert got.status_code == 200 and len(got.content) == 5000
    assert seen and all(seen), seen
