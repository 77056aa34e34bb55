"""Issue 17: Python's cyclic garbage collector is off through start-up (imports and typer's
command: objects that live to the end, which it would scan again and again and never free), on
again for every command but the short ones (COLLECTOR_OFF), and as it was once main() returns."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from provision.cli.app import COLLECTOR_OFF, COMMANDS
from tests.cli_helpers import invoke

# Runs `provision ARGV` through the console entry point, with each command's callback replaced by
# one that records whether the collector is on when the command starts, and how many collections
# ran since main() turned it off, then exits.
PROBE = """
import gc, json, sys
from provision.cli import app as cli_app

def collections():
    return sum(s["collections"] for s in gc.get_stats())

at_start = []
real_disable = gc.disable

def disable():
    at_start.append(collections())
    real_disable()

gc.disable = disable

built = cli_app.build_commands

def probed(module_name):
    commands = built(module_name)
    for command in commands.values():
        def record(*args, **kwargs):
            print("PROBE " + json.dumps([gc.isenabled(), collections() - at_start[0]]))
            sys.exit(0)
        command.callback = record
    return commands

cli_app.build_commands = probed

# `provision lock` is read without typer (provision/cli/quick.py): its body records the same.
from provision.cli import lock_run

def record_quick(*args, **kwargs):
    print("PROBE " + json.dumps([gc.isenabled(), collections() - at_start[0]]))
    sys.exit(0)

lock_run.run = record_quick
sys.argv = ["provision", *sys.argv[1:]]
from provision.cli.main import main
main()
"""


def _probe(*argv: str) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    assert line, done.stdout + done.stderr
    enabled, collections = json.loads(line[0][len("PROBE ") :])
    return enabled, collections


def test_short_commands_run_with_the_collector_off_from_the_start():
    assert COLLECTOR_OFF.issubset(COMMANDS)
    for argv in (["lock", "smolvlm-256m"], ["--json", "check", "smolvlm-256m"], ["gpus"]):
        enabled, collections = _probe(*argv)
        assert enabled is False, argv
        assert collections == 0, argv  # typer building the command and its module: none


def test_other_commands_get_the_collector_back_before_they_start():
    for argv in (["download", "smolvlm-256m"], ["--json", "setup", "smolvlm-256m"]):
        enabled, _ = _probe(*argv)
        assert enabled is True, argv


def test_main_leaves_the_collector_as_it_found_it():
    assert gc.isenabled()
    assert invoke("gpus", "--json").returncode == 0
    assert gc.isenabled()
    gc.disable()
    try:
        assert invoke("download", "--help").returncode == 0
        assert not gc.isenabled()  # off before: a long command does not turn it on
    finally:
        gc.enable()
