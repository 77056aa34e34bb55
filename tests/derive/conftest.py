"""A local hub serving real config files (tests/fixtures/hub-configs, copied from public repos,
each folder's SOURCE.md names where) with safetensors shards whose headers are real (built from
the config by transformers on the meta device, recorded in tests/fixtures/derive-tensors: see
tests/derive/headers.py) and whose bodies are holes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.derive.headers import recorded_tensors, write_sparse_safetensors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hub-configs"
CONFIG_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)
# Folder -> shards to split the checkpoint into (several shards: an index and more Range reads).
MODELS = {
    "Qwen--Qwen2-VL-2B-Instruct": 2,
    "Qwen--Qwen2.5-VL-3B-Instruct": 2,
    "Qwen--Qwen2.5-VL-7B-Instruct": 5,
    "Qwen--Qwen2-VL-7B-Instruct": 5,
    "Qwen--Qwen3-VL-4B-Instruct": 2,
    "llava-hf--llava-1.5-7b-hf": 3,
    "meta-llama--Llama-3.2-11B-Vision-Instruct": 5,
    "HuggingFaceTB--SmolVLM-256M-Instruct": 1,
    "google--gemma-3-4b-it": 2,
}


def repo_id(folder: str) -> str:
    return folder.replace("--", "/", 1)


def copy_configs(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each model of MODELS as a folder: its real configs plus sparse safetensors shards."""
    root = tmp_path_factory.mktemp("derive-models")
    out = {}
    for folder, shards in MODELS.items():
        dst = copy_configs(FIXTURES / folder, root / folder)
        write_sparse_safetensors(dst, recorded_tensors(folder), shards=shards)
        out[repo_id(folder)] = dst
    return out


@pytest.fixture(scope="session")
def derive_hub(
    model_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """One hub for the session with every model of MODELS published (revision main)."""
    from tests.servers.hub import HubServer

    with HubServer(tmp_path_factory.mktemp("derive-hub")) as hub:
        for repo, folder in model_folders.items():
            hub.add_repo(repo, folder, unhashed=("*.safetensors",))
        yield hub


@pytest.fixture
def derive_env(derive_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process and its children read metadata from `derive_hub`; cache under tmp_path."""
    env = {
        "HF_ENDPOINT": derive_hub.url,
        "MODELSCOPE_ENDPOINT": derive_hub.url,
        "PROVISION_SOURCES": derive_hub.url,
        "PROVISION_METADATA_CACHE": str(tmp_path / "metadata"),
        "PROVISION_DATA_DIR": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HF_HOME": str(tmp_path / "hf"),
        "PROVISION_LOCK_DIR": str(tmp_path / "locks"),  # download records here, not lockfiles/
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    (tmp_path / "data").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "PROVISION_OFFLINE", "PROVISION_PROFILES_DIR"):
        monkeypatch.delenv(key, raising=False)
    return env
