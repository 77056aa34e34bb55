"""Run the real `provision` CLI in a subprocess, as users do (exit codes, stdout, stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.json_contract import check_envelope


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


def envelope_of(proc: Any) -> dict[str, Any]:
    """The --json envelope a run printed (its whole stdout), checked against the contract
    (tests/json_contract.py): every test that reads JSON reads it through here."""
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"not one JSON document (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from exc
    check_envelope(doc)
    assert doc["ok"] == (proc.returncode == 0), f"ok={doc['ok']} but rc={proc.returncode}"
    if not doc["ok"]:
        assert doc["error"]["exit_code"] == proc.returncode, (doc["error"], proc.returncode)
    return doc


def result_of(proc: Any) -> Any:
    """The envelope's result (what the command reports), the envelope checked."""
    return envelope_of(proc)["result"]


def run_envelope(*args: str, env: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
    """`provision --json ARGS` in a subprocess: (exit code, the checked envelope)."""
    proc = run_cli("--json", *args, env=env, **kw)
    return proc.returncode, envelope_of(proc)


def run_json(*args: str, env: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
    """`provision --json ARGS` in a subprocess: (exit code, the envelope's result)."""
    code, doc = run_envelope(*args, env=env, **kw)
    return code, doc["result"]


def invoke_envelope(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    """`provision --json ARGS` in this process: (exit code, the checked envelope)."""
    proc = invoke("--json", *args, env=env)
    return proc.returncode, envelope_of(proc)


def invoke_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    """`provision --json ARGS` in this process: (exit code, the envelope's result). For tests
    of what a command computes and prints; `run_json` keeps the start-up path."""
    code, doc = invoke_envelope(*args, env=env)
    return code, doc["result"]


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
    # the whole environment: a command may set variables (--offline sets PROVISION_OFFLINE)
    saved_env = dict(os.environ)
    saved_argv, saved_state = sys.argv, dict(output._STATE)
    code = 0
    try:
        os.environ.update(overlay)
        sys.argv = ["provision", *args]
        output._STATE.update(json=False, command=None)  # as a new process starts
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        output._STATE.clear()
        output._STATE.update(saved_state)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["provision", *args], code, out.getvalue(), err.getvalue())
