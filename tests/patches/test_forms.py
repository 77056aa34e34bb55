"""The fix recognises the code of every affected release form, and its edit undoes exactly.

Each case installs one released transformers (no dependencies) with uv into a folder and works on
its real `generation/utils.py`: one per code form the fix knows, plus the last affected release.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provision.patches import base
from provision.patches.group_beam_search_dtype import FIX
from provision.uv import uv_bin

pytestmark = pytest.mark.slow


def _released_file(version: str, folder: Path) -> bytes:
    cmd = [uv_bin(), "pip", "install", "--quiet", "--no-deps", "--python", "3.11"]
    cmd += ["--target", str(folder), f"transformers=={version}"]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (folder / "transformers" / "generation" / "utils.py").read_bytes()


@pytest.mark.parametrize(
    ("version", "form"),
    [
        ("4.45.2", "4.45: logits upcast with .float()"),
        ("4.46.3", "4.46-4.50: .float() then .to(input_ids.device)"),
        ("4.50.3", "4.46-4.50: .float() then .to(input_ids.device)"),
        ("4.56.2", "4.51-4.56: .to(dtype=torch.float32, device=input_ids.device)"),
    ],
)
def test_each_form_is_recognised_patched_and_restored(
    version: str, form: str, tmp_path: Path
) -> None:
    raw = _released_file(version, tmp_path)
    text = raw.decode("utf-8")
    assert FIX.applies_to(version) == (True, "")
    found = FIX.detect(text)
    assert (found.state, found.form) == (base.ORIGINAL, form)

    patched = FIX.apply_text(text)
    assert FIX.detect(patched).state == base.PATCHED
    diff = [(a, b) for a, b in zip(text.splitlines(), patched.splitlines(), strict=True) if a != b]
    assert len(diff) == 1
    assert diff[0][0].strip() == FIX.original
    assert diff[0][1].strip() == f"{FIX.patched}  # provision: {FIX.id}"
    assert FIX.revert_text(patched).encode("utf-8") == raw


def test_versions_outside_the_range_say_why() -> None:
    assert FIX.applies_to("4.44.2")[0] is False
    assert "before 4.45" in FIX.applies_to("4.44.2")[1]
    assert FIX.applies_to("4.57.0")[0] is False
    assert "left the core library" in FIX.applies_to("4.57.0")[1]
    assert "left the core library" in FIX.applies_to("5.23.0")[1]
    assert FIX.applies_to("4.56.2") == (True, "")
