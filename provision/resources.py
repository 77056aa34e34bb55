"""Where the built-in tables live: in the package (a wheel) or at the repository top (checkout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def builtin_dir(name: str) -> Path:
    """`profiles`, `directions` or `lockfiles`: the wheel's copy, else the checkout's folder."""
    packaged = PACKAGE_DIR / "_builtin" / name
    if packaged.is_dir():
        return packaged
    return REPO_DIR / name


def data_file(name: str) -> Path:
    return PACKAGE_DIR / "data" / name


def load_table(name: str) -> dict[str, Any]:
    """A built-in table from provision/data, parsed (callers cache what they read often)."""
    from provision import tomlparse

    with data_file(name).open("rb") as handle:
        return tomlparse.load(handle)
