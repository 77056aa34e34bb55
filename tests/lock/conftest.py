"""Fixtures for lock tests: the local PEP 503 index (one per session) and a tiny profile folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.resources import builtin_dir
from tests.servers.pypi_index import FakeIndex, build_tree, build_wheel, serve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS = {
    "infer": ["torch==2.4.0+cu121", "torchvision==0.19.0", "transformers==4.44.0", "tinylib==1.0"],
    # torch needs tinydep>=1: this set cannot be satisfied
    "lora": ["torch==2.4.0", "torchvision==0.19.0", "transformers==4.44.0", "tinydep<1"],
}


@pytest.fixture(scope="session")
def fake_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeIndex]:
    with serve(build_tree(tmp_path_factory.mktemp("pypi-index"))) as index:
        yield index


def write_profile(folder: Path, name: str = "tiny-vl", tasks=None, **source) -> Path:
    """A valid profile (a built-in's numbers) with our own name and package sets."""
    import tomli_w

    data = tomllib.loads((builtin_dir("profiles") / "smolvlm-256m.toml").read_text())
    data["name"] = name
    data.pop("siblings", None)
    data["source"].update(source)
    data["tasks"] = {
        task: {"stack": "transformers", "packages": packages}
        for task, packages in (tasks or TASKS).items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture
def lock_env(tmp_path: Path, fake_index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An isolated pip configuration pointing at the fake index, with decoys on every other
    route (an extra index and a find-links folder both hold a torch 2.4.0+cu124 that must lose),
    and a profile folder holding `tiny-vl`."""
    decoys = tmp_path / "find-links"
    build_wheel(
        decoys, "torch", "2.4.0+cu124", ["tinydep>=1"], "cp311-cp311-manylinux_2_28_x86_64", "fl"
    )
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text(
        f"[global]\nindex-url = {fake_index.simple}\nextra-index-url = {fake_index.decoy}\n"
    )
    profiles = tmp_path / "profiles"
    write_profile(profiles)
    env = {
        "PIP_CONFIG_FILE": str(pip_conf),
        "PIP_FIND_LINKS": str(decoys),
        "PROVISION_PROFILES_DIR": str(profiles),
        "PROVISION_LOCK_DIR": str(tmp_path / "locks"),
        "HOME": str(tmp_path),
        "XDG_CONFIG_DIRS": str(tmp_path / "no-xdg"),
    }
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PROVISION_CUDA_DRIVER", "VIRTUAL_ENV"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {"env": env, "profiles": profiles, "locks": tmp_path / "locks", "tmp": tmp_path}
