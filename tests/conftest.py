"""Shared fixtures (each engineer appends theirs; keep sections separate)."""

from __future__ import annotations

# --- tiny models (tests/tinymodels.py) -------------------------------------------------------
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tinymodels import build_tiny_vlm


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
