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


def invoke(*args: str, env: dict[str, str] | None = None):
    """`provision ARGS` in this process, through the same entry point as the console script
    (errors become one message and an exit code): a CompletedProcess-like result.

    For tests of parsing and printing; start-up, signals and child processes keep `run_cli`."""
    import contextlib
    import io

    from provision.cli import output
    from provision.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    overlay = {"COLUMNS": "200", **(env or {})}
    saved_env = {k: os.environ.get(k) for k in overlay}
    saved_argv, saved_state = sys.argv, dict(output._STATE)
    code = 0
    try:
        os.environ.update(overlay)
        sys.argv = ["provision", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        output._STATE.clear()
        output._STATE.update(saved_state)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(["provision", *args], code, out.getvalue(), err.getvalue())
