"""Tiny random vision-language models for tests, built by the interpreter that will load them.

    from tests.tinymodels import build_tiny_vlm
    folder = build_tiny_vlm(tmp / "m", kind="qwen2_vl", python=env_python)
    hub.add_repo("tiny-org/tiny-qwen2-vl", folder)   # tests/servers/hub.py

A checkpoint saved by one transformers major version may not load in another, so the model is
written by `tests/tinymodel_builder.py` run as a script by `python` (the target environment's
interpreter), with that environment's transformers, torch and tokenizers only; no hub access.
Each folder holds config.json, model.safetensors (random weights, ~0.4 MB in bf16),
generation_config.json, a byte-level BPE tokenizer.json with the model's special tokens and chat
template, preprocessor_config.json and the processor's files.

Kinds (see KINDS): qwen2_vl (Qwen2VLForConditionalGeneration), qwen2_5_vl
(Qwen2_5_VLForConditionalGeneration) and llava (LlavaForConditionalGeneration).

Known limit: under transformers 5 the Qwen processors include a video processor that needs
torchvision, which this CPU-only machine lacks; there the Qwen folders carry every processor file
but `AutoProcessor.from_pretrained` raises that ImportError (the model and tokenizer load).
LLaVA loads fully under both 4.51 and 5.x; Qwen loads fully under 4.51.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BUILDER = Path(__file__).resolve().parent / "tinymodel_builder.py"
KINDS = ("qwen2_vl", "qwen2_5_vl", "llava")
MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
}


# This machine sets PYTHONDONTWRITEBYTECODE=1, so every child interpreter would recompile torch
# and transformers from source (~10 s); children keep their bytecode in a folder of their own
# instead, outside every environment and the repository. Under pytest that folder is the
# session's (tests/conftest.py sets PROVISION_TEST_PYCACHE below pytest's basetemp), so it goes
# with the session: bytecode is keyed by path, and every session's environments have new paths,
# so a folder shared across sessions only grows (by ~0.6 GB a run).
def pycache_dir() -> Path:
    """The folder child interpreters keep their bytecode in (PYTHONPYCACHEPREFIX)."""
    default = Path(tempfile.gettempdir()) / "provision-test-pycache"
    return Path(os.environ.get("PROVISION_TEST_PYCACHE") or default)


class TinyModelError(RuntimeError):
    """The builder script failed: carries its stderr (the target transformers' own error)."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a test's child interpreter: offline, quiet, with cached bytecode."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache_dir())
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if extra:
        env.update(extra)
    return env


def build_tiny_vlm(
    dest: Path,
    kind: str = "qwen2_vl",
    python: str | os.PathLike[str] = sys.executable,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Build a tiny random `kind` VLM into `dest` with `python`'s transformers; return `dest`.

    The same (kind, dtype, seed) gives the same weights for the same torch. `dest` may exist; its
    model files are overwritten. Raises TinyModelError with the builder's stderr on failure.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {', '.join(KINDS)}")
    dest = Path(dest).resolve()
    summary = _run_builder(dest, kind, python, dtype, seed)
    (dest.parent / f".{dest.name}.build.json").write_text(json.dumps(summary, indent=2))
    return dest


def build_summary(dest: Path) -> dict[str, object]:
    """What the builder reported for `dest`: class, files, bytes, versions, seconds."""
    dest = Path(dest).resolve()
    return json.loads((dest.parent / f".{dest.name}.build.json").read_text())


def _run_builder(
    dest: Path, kind: str, python: str | os.PathLike[str], dtype: str, seed: int
) -> dict[str, object]:
    command = [
        str(python),
        str(BUILDER),
        "--kind",
        kind,
        "--dest",
        str(dest),
        "--dtype",
        dtype,
        "--seed",
        str(seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), check=False)
    if done.returncode != 0:
        raise TinyModelError(
            f"building a tiny {kind} with {python} failed (exit {done.returncode}):\n"
            + done.stderr[-4000:]
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
