"""Fixtures for `provision setup` end to end: a tiny LLaVA on a local hub and a profile for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from provision.resources import builtin_dir
from provision.uv import uv_bin
from tests.envs.helpers import torch_wheel_dir
from tests.servers.hub import HubServer
from tests.tinymodels import build_tiny_vlm

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = "tiny-org/tiny-llava-setup"
PROFILE = "tiny-llava-setup"
# What the profile asks for: transformers 4.51 has the group beam search dtype bug, so the
# fixes stage has something to do and the smoke's beam mode proves the fix.
PACKAGES = ["torch==2.13.0", "transformers==4.51.3", "pillow", "jinja2"]


@pytest.fixture(scope="session")
def builder_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with the profile's transformers, to write a checkpoint that version reads
    (a model saved by transformers 5 may not load in 4.51). uv's cache makes this quick."""
    env = tmp_path_factory.mktemp("setup-builder") / "venv"
    uv = uv_bin()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(env)], check=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(env / "bin" / "python")]
        + ["--find-links", str(torch_wheel_dir())]
        + ["torch==2.13.0+cpu", "transformers==4.51.3", "pillow"],
        check=True,
    )
    return env / "bin" / "python"


@pytest.fixture(scope="session")
def tiny_llava_folder(tmp_path_factory: pytest.TempPathFactory, builder_python: Path) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("setup-model") / "m", "llava", builder_python)


def write_profile(folder: Path, name: str = PROFILE, repo: str = REPO) -> Path:
    """llava-1.5-7b-hf's shape with this tiny checkpoint's size (the disk check reads it)."""
    data = tomllib.loads((builtin_dir("profiles") / "llava-1.5-7b-hf.toml").read_text())
    data["name"] = name
    data["weights"]["bytes"] = 1_000_000
    data["params"].update(total=500_000, vision=100_000, language=400_000)
    data["source"] = {"huggingface": repo, "gated": False}
    data["tasks"] = {"infer": {"stack": "transformers", "packages": PACKAGES}}
    data["smoke"] = {"prompt": "What is in this picture?", "max_new_tokens": 6}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def use_world_env(mp: pytest.MonkeyPatch, root: Path, hub_url: str) -> dict[str, str]:
    """The variables a user of a world under `root` would have set (profiles, locks and data
    disk there, the local hub as the only source), set in this process and so in the CLI it
    starts; a user's own hub settings are taken away. Returns what was set."""
    env = {
        "PROVISION_PROFILES_DIR": str(root / "profiles"),
        "PROVISION_LOCK_DIR": str(root / "locks"),
        "PROVISION_DATA_DIR": str(root / "data"),
        "PROVISION_SOURCES": hub_url,
        "HF_ENDPOINT": hub_url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PROVISION_RETRY_WAIT": "0.05",
        # Bytecode of this test's own environment goes with the test.
        "PYTHONPYCACHEPREFIX": str(root / "pycache"),
    }
    for key, value in env.items():
        mp.setenv(key, value)
    for key in ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "PYTHONDONTWRITEBYTECODE"):
        mp.delenv(key, raising=False)
    return env


@pytest.fixture
def setup_world(tmp_path: Path, tiny_llava_folder: Path, monkeypatch: pytest.MonkeyPatch):
    """A hub serving the tiny model, a profiles folder, and a data disk, all under tmp_path;
    the environment variables a user would have set, for this process and the CLI it starts."""
    with HubServer(tmp_path / "hub") as hub:
        commit = hub.add_repo(REPO, tiny_llava_folder)
        write_profile(tmp_path / "profiles")
        env = use_world_env(monkeypatch, tmp_path, hub.url)
        yield {"hub": hub, "commit": commit, "root": tmp_path, "env": env}
