"""Profiles and directions written by the tests, and the options that lock them on this machine.

The tiny profiles resolve for real: torch 2.13.0+cpu from the local wheel folder (the only CPU
torch here, named by PIP_FIND_LINKS) through `--torch-index FOLDER --variant cpu`, everything
else from PyPI and the machine's pip indexes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from provision.resources import builtin_dir
from tests.envs.helpers import torch_wheel_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROMPT = "What is shown in this image? Answer in one short sentence."
# What a tiny model needs in its env: transformers 4.51 (with the beam-search dtype bug the
# fix covers) and the hub client it was released with (transformers 4.x refuses hub 1.x).
TINY = ["torch==2.13.0", "transformers==4.51.3", "huggingface_hub<1.0", "pillow", "jinja2"]


def lock_args() -> list[str]:
    return ["--variant", "cpu", "--torch-index", str(torch_wheel_dir())]


def lock_kwargs() -> dict[str, Any]:
    return {"variant": "cpu", "torch_index": str(torch_wheel_dir())}


def write_profile(
    folder: Path,
    name: str,
    repo_id: str | None = None,
    infer: list[str] | None = None,
    lora: list[str] | None = None,
    fixes: tuple[str, ...] = ("group-beam-search-dtype",),
    python: str | None = None,
    max_new_tokens: int = 8,
) -> Path:
    """A valid profile (qwen2-vl-2b's shape) with our own repo, packages and fixes."""
    import tomli_w

    data: dict[str, Any] = tomllib.loads((builtin_dir("profiles") / "qwen2-vl-2b.toml").read_text())
    data["name"] = name
    data.pop("siblings", None)
    data["fixes"] = list(fixes)
    data["source"] = {"huggingface": repo_id or f"tiny-org/{name}", "gated": False}
    data["tasks"] = {"infer": {"stack": "transformers", "packages": list(infer or TINY)}}
    if lora is not None:
        data["tasks"]["lora"] = {"stack": "peft", "packages": list(lora)}
    if python:
        data["python"] = python
    data["smoke"] = {"prompt": PROMPT, "max_new_tokens": max_new_tokens}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def direction_text(
    name: str,
    members: list[tuple[str, list[str]]],
    packages: list[str] | None = None,
    python: str | None = None,
    environment: dict[str, Any] | None = None,
    description: str = "a test direction",
) -> str:
    lines = ["# written by the tests", f"name = {json.dumps(name)}"]
    lines.append(f"description = {json.dumps(description)}")
    if python:
        lines.append(f"python = {json.dumps(python)}")
    if packages is not None:
        lines.append(f"packages = {json.dumps(packages)}")
    if environment:
        lines.append("\n[environment]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in environment.items()]
    for profile, tasks in members:
        lines += ["", f"# member {profile}", "[[members]]", f"profile = {json.dumps(profile)}"]
        lines.append(f"tasks = {json.dumps(tasks)}")
    return "\n".join(lines) + "\n"


def write_direction(folder: Path, name: str, members: list[tuple[str, list[str]]], **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(direction_text(name, members, **kw))
    return path


def read_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def tool(path: Path) -> dict[str, Any]:
    return read_toml(path).get("tool", {}).get("provision", {})


def locked_versions(path: Path) -> dict[str, str]:
    return {p["name"].lower(): str(p["version"]) for p in read_toml(path)["packages"]}
