"""Run the real `provision` CLI in a subprocess, as users do (exit codes, stdout, stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd=None):
    """`python -m provision ARGS` in the test's environment plus `env`: a CompletedProcess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "provision", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


def run_json(*args: str, env: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
    proc = run_cli("--json", *args, env=env, **kw)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"not JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from exc
