"""Fixtures for the hub tests: a local hub per test, its environment, a published tiny repo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hub import helpers
from tests.servers.hub import HubServer


@pytest.fixture
def hub(tmp_path: Path):
    with HubServer(tmp_path / "hub-root") as server:
        yield server


@pytest.fixture
def hub_env(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process and its children download from `hub` into tmp_path, locks in tmp_path."""
    env = helpers.hub_env(hub.url, tmp_path)
    for key, value in env.items():
        if key == "PATH":
            continue
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "profiles").mkdir(exist_ok=True)
    return env


@dataclass
class Published:
    repo_id: str
    folder: Path
    commit: str
    profile: str
    size: int


@pytest.fixture
def tiny(hub: HubServer, hub_env: dict[str, str], tmp_path: Path) -> Published:
    """org/tiny: three small files and two shards (3 MB and 2 MB), profile `tiny`."""
    folder = helpers.make_repo(
        tmp_path / "src" / "tiny",
        {
            "model-00001-of-00002.safetensors": 3_000_000,
            "model-00002-of-00002.safetensors": 2_000_000,
        },
    )
    commit = hub.add_repo("org/tiny", folder)
    helpers.write_profile(tmp_path / "profiles", "tiny", "org/tiny", modelscope="org/tiny")
    return Published("org/tiny", folder, commit, "tiny", helpers.tree_bytes(folder))
