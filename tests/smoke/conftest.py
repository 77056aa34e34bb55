"""Fixtures for the smoke tests: a transformers 4.51 environment, tiny models on a local hub,
downloaded with the real huggingface_hub client into one HF cache, and profiles naming them."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.uv import uv_bin
from tests.envs.helpers import torch_wheel_dir
from tests.servers.hub import HubServer
from tests.smoke.helpers import write_smoke_profile
from tests.tinymodels import build_tiny_vlm, pycache_dir

# The newest transformers with group beam search in the core library and the dtype bug, and the
# hub client it was released against (transformers 4.x refuses huggingface_hub 1.x).
LEGACY_REQUIREMENTS = [
    "torch==2.13.0+cpu",
    "transformers==4.51.3",
    "huggingface_hub<1.0",
    "pillow",
    "jinja2",
]


@pytest.fixture(scope="session")
def tf4_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real uv venv with transformers 4.51.3 and torch 2.13 CPU (from the local wheel folder).

    Private to the smoke tests: one of them patches and reverts its transformers in place.
    """
    env = tmp_path_factory.mktemp("smoke-envs") / "tf4"
    uv = uv_bin()
    subprocess.run(
        [uv, "venv", "--quiet", "--no-project", "--python", sys.executable, str(env)], check=True
    )
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(env / "bin" / "python")]
        + ["--find-links", str(torch_wheel_dir()), *LEGACY_REQUIREMENTS],
        check=True,
    )
    return env / "bin" / "python"


@dataclass
class SmokeModels:
    hub: HubServer
    hf_home: Path
    commits: dict[str, str]  # repo id -> published commit
    profiles: Path


# (repo id, kind, which python builds and later loads it, the profile's infer stack)
REPOS = {
    "tiny-org/qwen2-vl-tf4": ("qwen2_vl", "tf4", "transformers"),
    "tiny-org/llava-tf4": ("llava", "tf4", "transformers"),
    "tiny-org/llava-tf5": ("llava", "tf5", "vllm"),
    "tiny-org/qwen2-vl-tf5": ("qwen2_vl", "tf5", "transformers"),
}
PROFILE_NAMES = {
    "tiny-org/qwen2-vl-tf4": "tiny-qwen2-vl-tf4",
    "tiny-org/llava-tf4": "tiny-llava-tf4",
    "tiny-org/llava-tf5": "tiny-llava-tf5",
    "tiny-org/qwen2-vl-tf5": "tiny-qwen2-vl-tf5",
}


@pytest.fixture(scope="session")
def smoke_models(tmp_path_factory: pytest.TempPathFactory, tf4_python: Path) -> SmokeModels:
    """Each tiny model built by the transformers that will load it, published on a local hub
    and downloaded from it by huggingface_hub into one HF_HOME; a profile for each."""
    from huggingface_hub import snapshot_download

    root = tmp_path_factory.mktemp("smoke-models")
    hf_home = root / "hf"
    profiles = root / "profiles"
    pythons = {"tf4": tf4_python, "tf5": Path(sys.executable)}
    commits = {}
    # Two builds at a time: each is mostly one interpreter importing torch and transformers.
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = {
            repo_id: pool.submit(build_tiny_vlm, root / "built" / repo_id, kind, pythons[env])
            for repo_id, (kind, env, _stack) in REPOS.items()
        }
        folders = {repo_id: future.result() for repo_id, future in built.items()}
    with HubServer(root / "hub") as hub:
        for repo_id, (_kind, _env, stack) in REPOS.items():
            commits[repo_id] = hub.add_repo(repo_id, folders[repo_id])
            snapshot_download(repo_id, endpoint=hub.url, cache_dir=hf_home / "hub", token=False)
            write_smoke_profile(profiles, PROFILE_NAMES[repo_id], repo_id, stack=stack)
        yield SmokeModels(hub, hf_home, commits, profiles)


@pytest.fixture(autouse=True)
def _child_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine sets PYTHONDONTWRITEBYTECODE; without a bytecode cache every smoke's Python
    # recompiles torch and transformers (~10 s). Kept outside the environments under test.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(pycache_dir()))


@pytest.fixture(autouse=True)
def _records_in_tmp(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a smoke records for an existing lock goes to this machine's record on the data
    disk (provision.lock.lockfile.record): keep that disk under the test's tmp_path."""
    monkeypatch.setenv("PROVISION_DATA_DIR", str(tmp_path / "data"))
