"""Profiles for tiny smoke models: a built-in profile's shape with the repo and stack replaced."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from provision.resources import builtin_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROMPT = "What is shown in this image? Answer in one short sentence."


def write_smoke_profile(
    profiles: Path,
    name: str,
    repo_id: str,
    stack: str = "transformers",
    max_new_tokens: int = 8,
    fixes: tuple[str, ...] = ("group-beam-search-dtype",),
) -> Path:
    """A valid profile for `repo_id` whose smoke asks PROMPT for `max_new_tokens` tokens."""
    import tomli_w

    data: dict[str, Any] = tomllib.loads((builtin_dir("profiles") / "qwen2-vl-2b.toml").read_text())
    data["name"] = name
    data.pop("siblings", None)
    data["fixes"] = list(fixes)
    data["source"] = {"huggingface": repo_id, "gated": False}
    data["tasks"]["infer"]["stack"] = stack
    data["smoke"] = {"prompt": PROMPT, "max_new_tokens": max_new_tokens}
    profiles.mkdir(parents=True, exist_ok=True)
    path = profiles / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path
