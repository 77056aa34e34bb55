"""What a lock's [tool.provision] asks of the install besides uv's packages, with the real uv:
the build settings of its sdists (DeepSpeed's DS_BUILD_OPS=0) reach the build, and flash-attn's
release wheel goes in after the lock's packages, or attention falls back to sdpa by name
(nothing compiled) when the wheel cannot be had."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from provision.envs import ensure_env
from tests.envs.helpers import make_wheel, write_pylock

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

FA_VERSION = "2.7.4.post1+cu12torch2.4cxx11abiFALSE"
FA_WHEEL = f"flash_attn-{FA_VERSION}-cp311-cp311-linux_x86_64.whl"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture
def release(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP standing in for the GitHub release: (folder, base URL)."""
    folder = tmp_path / "release"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def private_uv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def _lock(tmp_path: Path, tool: dict, extra: list | None = None) -> Path:
    einops = make_wheel(tmp_path / "wheels", "einops", "0.8.1")
    path = write_pylock(tmp_path / "lock" / "pylock.toml", [("einops", "0.8.1", einops)])
    data = tomllib.loads(path.read_text())
    data["packages"] += extra or []
    data["tool"] = {"provision": tool}
    path.write_text(tomli_w.dumps(data))
    return path


def _attention(url: str, implementation: str = "flash_attention_2") -> dict:
    table = {
        "implementation": implementation,
        "requested": "flash-attn==2.7.4.post1",
        "reason": "torch 2.4 cu124 (CUDA 12), Python 3.11, C++11 ABI FALSE",
        "version": "2.7.4.post1",
    }
    if implementation == "flash_attention_2":
        table.update(wheel=FA_WHEEL, url=f"{url}/v2.7.4.post1/{FA_WHEEL}")
    return {"attention": table}


def _flash_attn_in(env: Path) -> str | None:
    code = "import flash_attn; print(flash_attn.VERSION)"
    proc = subprocess.run([str(env / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_flash_attn_release_wheel_goes_in_after_the_lock_and_stays(tmp_path, release):
    folder, url = release
    make_wheel(folder / "v2.7.4.post1", "flash-attn", FA_VERSION, "cp311-cp311-linux_x86_64")
    lock = _lock(tmp_path, _attention(url))
    env = tmp_path / "env"
    made = ensure_env(env, lock)
    assert made.action == "created"
    assert made.attention["implementation"] == "flash_attention_2"
    assert made.attention["action"] == "installed" and made.attention["wheel"] == FA_WHEEL
    assert f"flash-attn: installed {FA_WHEEL}." in made.message
    assert _flash_attn_in(env) == FA_VERSION
    # the next run finds the env as the lock wants it, flash-attn included: nothing re-installed
    again = ensure_env(env, lock)
    assert again.action == "unchanged" and again.attention["action"] == "present"
    assert _flash_attn_in(env) == FA_VERSION


def test_a_wheel_that_cannot_be_had_falls_back_to_sdpa_without_compiling(tmp_path, release):
    _, url = release  # the release folder is empty: the URL answers 404
    lock = _lock(tmp_path, _attention(url))
    env = tmp_path / "env"
    made = ensure_env(env, lock)
    assert made.action == "created" and made.installed == ["einops==0.8.1"]
    assert made.attention["implementation"] == "sdpa"
    assert made.attention["action"] == "fallback" and FA_WHEEL in made.attention["reason"]
    assert "Attention falls back to sdpa" in made.message and "nothing was compiled" in made.message
    assert _flash_attn_in(env) is None


def test_a_wheelhouse_holding_the_wheel_serves_it_offline(tmp_path, release):
    _, url = release
    house = tmp_path / "house"
    wheel = make_wheel(house, "flash-attn", FA_VERSION, "cp311-cp311-linux_x86_64")
    make_wheel(house, "einops", "0.8.1")
    lock = _lock(tmp_path, _attention(url))
    made = ensure_env(tmp_path / "env", lock, house)
    assert made.attention["action"] == "installed" and made.attention["from"] == str(wheel)
    assert made.attention["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_the_lock_s_own_fallback_is_said_and_nothing_is_fetched(tmp_path, release):
    _, url = release
    lock = _lock(tmp_path, _attention(url, "sdpa"))
    made = ensure_env(tmp_path / "env", lock)
    assert made.attention["implementation"] == "sdpa"
    assert "Attention: sdpa (the lock's fallback" in made.message
    assert release[0].exists() and not list(release[0].iterdir())


def test_a_forged_wheel_name_in_the_lock_is_refused(tmp_path, release):
    _, url = release
    tool = _attention(url)
    tool["attention"]["wheel"] = "../../evil.whl"
    from provision.errors import ProvisionError

    with pytest.raises(ProvisionError, match="not a flash-attn wheel file name"):
        ensure_env(tmp_path / "env", _lock(tmp_path, tool))


def _probe_sdist(folder: Path) -> Path:
    """An sdist with an in-tree PEP 517 backend (no build requirements) whose wheel records the
    DS_BUILD_OPS and PROVISION_TEST_UNLISTED it was built with."""
    backend = """
import base64, hashlib, os, zipfile

NAME, VERSION = "dsprobe", "1.0"
INFO = f"{NAME}-{VERSION}.dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    module = "DS_BUILD_OPS = %r\\nUNLISTED = %r\\n" % (
        os.environ.get("DS_BUILD_OPS"), os.environ.get("PROVISION_TEST_UNLISTED"))
    files = {
        f"{NAME}.py": module,
        f"{INFO}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n",
        f"{INFO}/WHEEL": "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\n"
        "Tag: py3-none-any\\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{INFO}/RECORD"] = "\\n".join(record + [f"{INFO}/RECORD,,"]) + "\\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return name
"""
    members = {
        "dsprobe-1.0/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
        'backend-path = ["."]\n',
        "dsprobe-1.0/backend.py": backend,
        "dsprobe-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: dsprobe\nVersion: 1.0\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dsprobe-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_lock_s_build_settings_reach_the_sdist_build_and_nothing_else(tmp_path, monkeypatch):
    """DS_BUILD_OPS=0 was written into the lock's env table and then not given to the build."""
    monkeypatch.delenv("DS_BUILD_OPS", raising=False)
    sdist = _probe_sdist(tmp_path / "sdists")
    entry = {
        "name": "dsprobe",
        "version": "1.0",
        "sdist": {
            "path": str(sdist),
            "hashes": {"sha256": hashlib.sha256(sdist.read_bytes()).hexdigest()},
        },
    }
    tool = {"env": {"DS_BUILD_OPS": "0", "PROVISION_TEST_UNLISTED": "set-by-a-lock"}}
    lock = _lock(tmp_path, tool, [entry])
    env = tmp_path / "env"
    made = ensure_env(env, lock)
    assert "dsprobe==1.0" in made.installed and made.attention == {}
    code = "import dsprobe; print(dsprobe.DS_BUILD_OPS, dsprobe.UNLISTED)"
    out = subprocess.run([str(env / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["0", "None"], out.stderr


def test_setup_records_what_the_env_got_beside_the_lock_not_in_it(tmp_path, monkeypatch):
    """The env stage's outcome goes to this machine's record of the lock; the lock keeps its
    bytes (docs/lock-contract.md), and a reader of the record sees both pick and outcome."""
    from types import SimpleNamespace

    from provision.lock.lockfile import recorded_table
    from provision.setup import _Runner

    monkeypatch.setenv("PROVISION_DATA_DIR", str(tmp_path / "data"))
    lock = _lock(tmp_path, _attention("http://127.0.0.1:9"))
    before = lock.read_bytes()
    outcome = {"implementation": "sdpa", "action": "fallback", "reason": "r", "note": "n"}
    runner = SimpleNamespace(lock=lock, plan=SimpleNamespace(into_lock=False))
    _Runner._record_attention(runner, outcome)  # type: ignore[arg-type]
    assert lock.read_bytes() == before
    attention = recorded_table(lock)["attention"]
    assert attention["wheel"] == FA_WHEEL  # the lock's pick ...
    assert attention["installed"] == {"implementation": "sdpa", "action": "fallback", "reason": "r"}
