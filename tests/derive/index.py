"""A local package index holding a small installable wheel for each requirement a profile asks
for, so the real uv locks (and installs) a derived profile's own package set without PyPI.

The layout is tests/servers/pypi_index.py's: /simple/ for everything ("PyPI") and
/whl/cpu/ for the torch family with the `+cpu` label, as download.pytorch.org serves it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from tests.servers.pypi_index import FakeIndex, _write_project_pages, build_wheel

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
TAG = "cp311-cp311-manylinux_2_28_x86_64"


def _name_version(requirement: str) -> tuple[str, str]:
    """("name", "version") of `name==1.2`, `name>=1.2`, `name[extra]==1.2`; 1.0 when unpinned."""
    match = re.match(
        r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(?:(==|>=|~=)\s*([0-9][^,;\s]*))?", requirement
    )
    assert match, requirement
    return match.group(1).lower(), match.group(3) or "1.0"


def build_index_for(root: Path, requirements: Sequence[str]) -> FakeIndex:
    """One wheel per requirement (its pinned or lowest version); torch's family also +cpu."""
    index = FakeIndex(root)
    pypi: list[Path] = []
    cpu: list[Path] = []
    for requirement in requirements:
        name, version = _name_version(requirement)
        if name in TORCH_FAMILY:
            pypi.append(build_wheel(root / "files" / "pypi", name, version, (), TAG, "pypi"))
            cpu.append(build_wheel(root / "files" / "cpu", name, f"{version}+cpu", (), TAG, "cpu"))
        else:
            pypi.append(build_wheel(root / "files" / "pypi", name, version))
    index.files.update({p.name: p for p in pypi + cpu})
    _write_project_pages(root / "simple", pypi, "/files/pypi")
    _write_project_pages(root / "whl" / "cpu", cpu, "/files/cpu")
    return index
