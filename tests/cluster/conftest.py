"""Fixtures for `provision cluster slurm`: a real one-host Slurm cluster (n1, n2) for the session,
and a world with a local hub serving a tiny LLaVA, its profile and its lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_json
from tests.envs.helpers import torch_wheel_dir
from tests.servers.slurm_cluster import SlurmCluster
from tests.setup.conftest import (  # noqa: F401 - fixtures used here
    PROFILE,
    builder_python,
    setup_world,
    tiny_llava_folder,
    write_profile,
)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """munged, slurmctld and two slurmd (n1, n2) on this host; SLURM_CONF names its config."""
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def cluster_world(setup_world, slurm_cluster, tiny_llava_folder: Path, monkeypatch):  # noqa: F811
    """setup_world (a hub serving the tiny model, its profile, the user's variables) seen from a
    cluster's login node: SLURM_CONF for the Slurm commands, the lock made as a user would on the
    login node, and a shared dir (sbatch exports these variables to the nodes)."""
    tmp_path, hub, commit = setup_world["root"], setup_world["hub"], setup_world["commit"]
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("PROVISION_DATA_DIR", str(tmp_path / "login-data"))
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
