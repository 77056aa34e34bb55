"""Fixtures for `provision cluster slurm`: a real one-host Slurm cluster (n1, n2) for the session,
and a world with a local hub serving a tiny LLaVA, its profile and its lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_json
from tests.envs.helpers import torch_wheel_dir
from tests.servers.hub import HubServer
from tests.servers.slurm_cluster import SlurmCluster
from tests.setup.conftest import (  # noqa: F401 - fixtures used here
    PROFILE,
    REPO,
    builder_python,
    tiny_llava_folder,
    write_profile,
)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """munged, slurmctld and two slurmd (n1, n2) on this host; SLURM_CONF names its config."""
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def cluster_world(tmp_path: Path, tiny_llava_folder: Path, slurm_cluster, monkeypatch):  # noqa: F811
    """A hub serving the tiny model, its profile, its lock (made as a user would on the login
    node), a shared dir, and the variables the submitting shell has (sbatch exports them)."""
    with HubServer(tmp_path / "hub") as hub:
        commit = hub.add_repo(REPO, tiny_llava_folder)
        write_profile(tmp_path / "profiles")
        env = {
            "SLURM_CONF": str(slurm_cluster.conf),
            "PROVISION_PROFILES_DIR": str(tmp_path / "profiles"),
            "PROVISION_LOCK_DIR": str(tmp_path / "locks"),
            "PROVISION_DATA_DIR": str(tmp_path / "login-data"),
            "PROVISION_SOURCES": hub.url,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PROVISION_RETRY_WAIT": "0.05",
            "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        lock = tmp_path / "pylock.tiny.toml"
        rc, made = run_json(
            "lock", PROFILE, "-o", str(lock), "--torch-index", str(torch_wheel_dir()), timeout=900
        )
        assert rc == 0, made
        yield {
            "hub": hub,
            "commit": commit,
            "root": tmp_path,
            "lock": lock,
            "shared": tmp_path / "shared",
            "cluster": slurm_cluster,
            "model_bytes": sum(p.stat().st_size for p in tiny_llava_folder.glob("*.safetensors")),
        }
