"""Real environments with released transformers versions, built once per test session with uv.

4.51.3 (affected; with torch CPU so the bug and the fix can be run), 4.44.2 (before the bug; with
torch, to show group beam search works there in bf16) and 4.57.6 (after group beam search left
the library; no torch needed to tell it is not applicable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.envs import EnvResult, ensure_env, env_python
from tests.envs.helpers import compile_lock, torch_wheel_dir


@dataclass(frozen=True)
class TfEnv:
    env: Path
    lock: Path
    built: EnvResult

    @property
    def python(self) -> Path:
        return env_python(self.env)

    @property
    def generation_utils(self) -> Path:
        found = list(self.env.glob("lib/python3*/site-packages/transformers/generation/utils.py"))
        assert len(found) == 1, found
        return found[0]


def _build(factory: pytest.TempPathFactory, name: str, requirements: list[str]) -> TfEnv:
    base = factory.mktemp(name)
    wheels = torch_wheel_dir()
    lock = compile_lock(requirements, base / "lock", python="3.11", find_links=[str(wheels)])
    env = base / "env"
    built = ensure_env(env, lock, wheelhouse=wheels)
    return TfEnv(env, lock, built)


@pytest.fixture(scope="session")
def tf451(tmp_path_factory: pytest.TempPathFactory) -> TfEnv:
    return _build(tmp_path_factory, "tf451", ["transformers==4.51.3", "torch==2.13.0+cpu"])


@pytest.fixture(scope="session")
def tf444(tmp_path_factory: pytest.TempPathFactory) -> TfEnv:
    return _build(tmp_path_factory, "tf444", ["transformers==4.44.2", "torch==2.13.0+cpu"])


@pytest.fixture(scope="session")
def tf457(tmp_path_factory: pytest.TempPathFactory) -> TfEnv:
    return _build(tmp_path_factory, "tf457", ["transformers==4.57.6"])
