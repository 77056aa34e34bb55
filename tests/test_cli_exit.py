"""Issue 17: the console entry point (`main.entry`) ends a short command (app.COLLECTOR_OFF)
without the interpreter's teardown, after the atexit functions and a flush; every other command,
and a short one with another thread still running, exits as Python does."""

from __future__ import annotations

import os
import subprocess
import sys

# Runs `provision ARGV` through the console entry point, noting the atexit functions, a
# non-daemon thread when asked, and whether the process left through os._exit (and with what).
PROBE = """
import atexit, os, sys, threading, time
real_exit = os._exit

def quick(status):
    print(f"QUICK {status}", flush=True)
    real_exit(status)

os._exit = quick
atexit.register(lambda: print("ATEXIT", flush=True))
if os.environ.get("PROBE_THREAD"):
    def late():
        time.sleep(0.3)
        print("THREAD DONE", flush=True)
    threading.Thread(target=late).start()
sys.argv = ["provision", *sys.argv[1:]]
from provision.cli.main import entry
entry()
"""


def _run(*argv: str, thread: bool = False) -> subprocess.CompletedProcess[str]:
    env = {"PROBE_THREAD": "1"} if thread else {}
    return subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_a_short_command_leaves_quickly_after_its_atexit_functions_and_output():
    done = _run("gpus")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert lines[-2:] == ["ATEXIT", "QUICK 0"], done.stdout
    assert any("RTX 4090" in line for line in lines), done.stdout  # the table came out whole
    failed = _run("profiles", "show", "no-such-profile")
    assert failed.returncode == 2 and failed.stdout.splitlines()[-1] == "QUICK 2"
    assert "Unknown profile" in failed.stderr


def test_other_commands_and_a_running_thread_exit_normally():
    usage = _run("download", "--no-such-option")
    assert usage.returncode == 2 and "QUICK" not in usage.stdout and "ATEXIT" in usage.stdout
    threaded = _run("gpus", thread=True)
    assert threaded.returncode == 0
    assert "QUICK" not in threaded.stdout and "THREAD DONE" in threaded.stdout
