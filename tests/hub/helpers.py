"""Test repositories and profiles for the hub tests: small folders with real-looking files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from provision.resources import builtin_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def make_repo(folder: Path, shards: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A model-like folder: a config, a tokenizer file, a nested file and random shards."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "test", "seed": seed}) + "\n")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "seed": seed}) + "\n")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "notes.txt").write_text(f"nested file {seed}\n")
    for name, size in (shards or {"model.safetensors": 3 * 1024 * 1024}).items():
        (folder / name).write_bytes(rng.randbytes(size))
    return folder


def write_profile(
    profiles: Path,
    name: str,
    repo_id: str,
    modelscope: str | None = None,
    revision: str | None = None,
    gated: bool = False,
) -> Path:
    """A valid profile (a built-in one's shape) whose source is `repo_id`."""
    import tomli_w

    data: dict[str, Any] = tomllib.loads((builtin_dir("profiles") / "qwen2-vl-2b.toml").read_text())
    data["name"] = name
    data.pop("siblings", None)
    source = {"huggingface": repo_id, "gated": gated}
    if modelscope:
        source["modelscope"] = modelscope
    if revision:
        source["revision"] = revision
    data["source"] = source
    profiles.mkdir(parents=True, exist_ok=True)
    path = profiles / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def hub_env(hub_url: str, tmp: Path) -> dict[str, str]:
    """The environment a test process needs to download from the local hub into `tmp`."""
    return {
        "HF_HOME": str(tmp / "hf"),
        "MODELSCOPE_CACHE": str(tmp / "ms"),
        "HF_ENDPOINT": hub_url,
        "MODELSCOPE_ENDPOINT": hub_url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PROVISION_SOURCES": hub_url,
        "PROVISION_LOCK_DIR": str(tmp / "locks"),
        "PROVISION_PROFILES_DIR": str(tmp / "profiles"),
        "PROVISION_DATA_DIR": str(tmp / "data"),
        "PROVISION_RETRY_WAIT": "0.05",
        "HF_TOKEN": "",
        "PATH": os.environ.get("PATH", ""),
    }


def sizes(folder: Path, pattern: str) -> list[int]:
    """Sizes of the files in `folder` matching `pattern`, skipping any that vanish between the
    listing and the stat (another process renaming or deleting them)."""
    found = []
    for path in folder.glob(pattern):
        try:
            found.append(path.stat().st_size)
        except FileNotFoundError:
            continue
    return found


def wait_for(condition, timeout: float, step: float = 0.02) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


# A tiny visual-question-answering dataset, shaped as the real ones are read: one record per line
# with the question, several reference answers (OK-VQA's `answers` is a list of ten) and an image.
# lmms-lab/OK-VQA ships parquet with the image bytes inside; this one is JSON lines with the
# images beside it (as FoodieQA's json + image folders), so no parquet library is needed here.
TINY_VQA = [
    {"question_id": "1", "question": "What animal is this?", "answers": ["cat", "kitten", "cat"]},
    {"question_id": "2", "question": "What colour is it?", "answers": ["Red.", "red", "crimson"]},
    {"question_id": "3", "question": "Is it indoors?", "answers": ["yes", "Yes"]},
    {"question_id": "4", "question": "How many?", "answers": ["2", "two"]},
]


def make_vqa_dataset(
    folder: Path,
    items: list[dict[str, Any]] | None = None,
    extra: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """`folder` as a dataset repo: README.md, data/val.jsonl (question, answers, image path)
    and images/<id>.png (8x8 pictures), plus `extra` random files (name -> size) for transfer
    tests."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# tiny VQA\n")
    lines = []
    for index, item in enumerate(items if items is not None else TINY_VQA):
        image = f"images/{item.get('question_id', index)}.png"
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        Image.new("RGB", (8, 8), colour).save(folder / image)
        lines.append(json.dumps({**item, "image": image}))
    (folder / "data" / "val.jsonl").write_text("\n".join(lines) + "\n")
    for name, size in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(rng.randbytes(size))
    return folder
