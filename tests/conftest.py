"""Shared fixtures (each engineer appends theirs; keep sections separate)."""

from __future__ import annotations

# --- tiny models (tests/tinymodels.py) -------------------------------------------------------
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tinymodels import build_tiny_vlm


@pytest.fixture(scope="session", autouse=True)
def _session_pycache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Child interpreters' bytecode (tests.tinymodels.pycache_dir) in this session's basetemp,
    removed with it, rather than in one folder that every run adds new paths to."""
    if not os.environ.get("PROVISION_TEST_PYCACHE"):
        os.environ["PROVISION_TEST_PYCACHE"] = str(tmp_path_factory.mktemp("pycache"))


@pytest.fixture(autouse=True)
def _cli_output_state() -> Iterator[None]:
    """The CLI's --json state, as it was before the test: a test that runs the app in-process
    (typer's CliRunner) leaves --json on for every later one otherwise."""
    from provision.cli import output

    saved = dict(output._STATE)
    yield
    output._STATE.clear()
    output._STATE.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """provision's data dir (records, registry, caches) and XDG_CACHE_HOME in this session's
    basetemp: without them a test writes into the real ~/.cache/provision, and what one run
    leaves there (a lock's machine record, a stored uv input) changes what the next run sees."""
    os.environ["PROVISION_DATA_DIR"] = str(tmp_path_factory.mktemp("provision-data"))
    # provision's own small caches too (a lock's stored uv input, provision/lock/early.py), while
    # uv keeps its own warm cache where it is
    from benchmarks.timing import own_provision_cache

    os.environ.update(own_provision_cache(dict(os.environ), tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(scope="session")
def tiny_vlm_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build(kind="qwen2_vl", python=sys.executable, dtype="bfloat16", seed=0) -> folder.

    Each distinct (kind, python, dtype, seed) is built once per session; treat the folders as
    read-only (copy one before changing it).
    """
    built: dict[tuple[str, str, str, int], Path] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def build(
        kind: str = "qwen2_vl",
        python: str | Path = sys.executable,
        dtype: str = "bfloat16",
        seed: int = 0,
    ) -> Path:
        key = (kind, str(python), dtype, seed)
        if key not in built:
            built[key] = build_tiny_vlm(root / f"{kind}-{len(built)}", kind, python, dtype, seed)
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tiny_vlm_factory: Callable[..., Path]) -> Path:
    """A tiny random Qwen2-VL (bf16) saved by this session's transformers (5.x: see tinymodels)."""
    return tiny_vlm_factory("qwen2_vl")


@pytest.fixture(scope="session")
def tiny_llava(tiny_vlm_factory: Callable[..., Path]) -> Path:
    """A tiny random LLaVA-1.5-style model (bf16) saved by this session's transformers."""
    return tiny_vlm_factory("llava")


# --- local model hub (tests/servers/hub.py) ----------------------------------------------------
@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    """A running local hub speaking the Hugging Face and ModelScope routes the real clients use.

    Publish with `sha = hub_server.add_repo("org/name", folder)`; point clients at `hub_server.url`
    (see `hub_client_env`). Faults: `hub_server.fault("*.safetensors", cut_after=N | fail_first=K
    | fail_for=S | corrupt=True | throttle=B, times=..)`; counts: `bytes_sent`, `bytes_for(glob)`.
    """
    from tests.servers.hub import HubServer

    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture
def hub_client_env(hub_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process and its children fetch from `hub_server`; caches and locks under tmp_path.

    Sets HF_ENDPOINT, MODELSCOPE_ENDPOINT, PROVISION_SOURCES (so `--source auto` finds only the
    local hub), HF_HOME, MODELSCOPE_CACHE, PROVISION_LOCK_DIR, PROVISION_DATA_DIR,
    HF_HUB_DISABLE_TELEMETRY; removes
    HF_TOKEN and HF_HUB_OFFLINE. Returns the variables set.
    """
    env = {
        "HF_ENDPOINT": hub_server.url,
        "MODELSCOPE_ENDPOINT": hub_server.url,
        "PROVISION_SOURCES": hub_server.url,
        "HF_HOME": str(tmp_path / "hf"),
        "MODELSCOPE_CACHE": str(tmp_path / "ms"),
        "PROVISION_LOCK_DIR": str(tmp_path / "locks"),
        # The machine-side lock records (provision.lock.lockfile.record) stay under tmp_path too.
        "PROVISION_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PROVISION_RETRY_WAIT": "0.05",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    return env


# --- checks that must stay offline (lock --check, direction lock staleness) -------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket or subprocess (uv, a download) in the test fails it: files only."""
    import socket
    import subprocess

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("this check must not touch the network or run uv (files only)")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "64m") mounted on the new folder `mount`, unmounted afterwards.

    Needs root (CI runs as root); fails, never skips, without. A fixture built on it is listed
    in NEEDS below, so `-m "not root"` leaves its tests out.
    """
    import subprocess

    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (
        f"mounting a {size} tmpfs failed ({done.stderr.strip()}): these tests need root "
        "(CI runs them as root)"
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tmpfs_volume(tmp_path: Path):
    """A 64 MiB tmpfs of its own, for tests that make a volume read-only (`remount_read_only`):
    permission bits alone do not stop root, so only a real read-only mount shows what a user on
    one sees."""
    with mounted_tmpfs(tmp_path / "volume", "64m") as mount:
        yield mount


def remount_read_only(mount: Path) -> None:
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)


@pytest.fixture
def read_only(tmpfs_volume: Path) -> Path:
    """A read-only file system, as a shared or mis-mounted volume is."""
    remount_read_only(tmpfs_volume)
    return tmpfs_volume


# --- markers from the fixtures a test uses ------------------------------------------------------
# A test that needs podman, exFAT or root carries that marker, found from its fixtures (direct or
# through other fixtures), so `-m "not podman"` or `-m "not root"` leaves it out on a machine
# without and no test module has to remember to say so. Registered in pyproject.toml.
NEEDS = {
    "engine": ("podman", "slow"),  # the podman service and a base image: a minute or more
    "exfat_dir": ("exfat", "root"),
    "tmpfs_volume": ("root",),
    "full_disk": ("root",),  # tests/test_write_errors.py, on mounted_tmpfs
    "small_disk": ("root",),  # tests/hub/test_disk_full.py, on mounted_tmpfs
    # munged, slurmctld and two slurmd on this host (tests/servers/slurm_cluster.py): root only
    "slurm_cluster": ("slurm", "root"),
    # Building tiny models with transformers and loading them in child processes (30-140 s a
    # test on the shared 2-core machine), and a real direction lock with uv: not the fast loop.
    "tiny_vlm_factory": ("slow",),
    "tiny_pair": ("slow",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for mark in NEEDS.get(fixture, ()):
                item.add_marker(mark)


# What a machine lacks for each marker's tests, and the fix. A run that selects such tests on a
# machine without them stops before any test with ONE message (not one error per test, and
# never a silent skip): install the packages, or leave the tests out by their marker.
def _missing_podman() -> list[str]:
    from tests.servers.podman import missing_tools

    return missing_tools()


def _missing_exfat() -> list[str]:
    import shutil

    from tests.directions.conftest import EXFAT_TOOLS

    missing = [tool for tool in EXFAT_TOOLS if shutil.which(tool) is None]
    return missing + ([] if Path("/dev/fuse").exists() else ["/dev/fuse"])


def _missing_root() -> list[str]:
    return [] if os.geteuid() == 0 else ["root (these tests mount file systems)"]


MACHINE_NEEDS = {"podman": _missing_podman, "exfat": _missing_exfat, "root": _missing_root}


def unmet_needs(items: list[pytest.Item]) -> dict[str, tuple[int, list[str]]]:
    """marker -> (how many of `items` carry it, what this machine lacks for them)."""
    unmet = {}
    for marker, missing in MACHINE_NEEDS.items():
        count = sum(1 for item in items if item.get_closest_marker(marker) is not None)
        lacking = missing() if count else []
        if lacking:
            unmet[marker] = (count, lacking)
    return unmet


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return  # listing the tests needs none of it
    unmet = unmet_needs(session.items)
    if unmet:
        lines = [
            f"{count} selected test(s) marked {marker!r} need {', '.join(lacking)}, missing here."
            for marker, (count, lacking) in unmet.items()
        ]
        markers = " and ".join(f"not {marker}" for marker in unmet)
        raise pytest.UsageError(
            " ".join(lines) + " Install them with `scripts/install-test-deps` (the test command "
            f'in docs/testing.md runs it), or leave those tests out: -m "{markers}".'
        )
