"""Issue 17: `provision lock` is read without typer, from provision/data/cli_grammar.json (which
tests/test_reference.py keeps equal to what typer declares). Whatever the quick reader takes, it
must take exactly as typer does; whatever it is unsure of goes to typer."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from provision.cli import lock_run, quick
from provision.resources import data_file

GRAMMAR = json.loads(data_file(quick.GRAMMAR).read_text())["lock"]
BODY = inspect.signature(lock_run.run)

TAKEN = [
    ["smolvlm-256m"],
    ["smolvlm-256m", "--variant", "pypi", "--ignore-pip-config", "-o", "pylock.x.toml"],
    ["--task", "lora", "qwen2-vl-2b", "--gpu", "RTX 4090", "--gpus", "2", "--json"],
    ["--output=pylock.toml", "--python=3.12", "gemma-3-4b-it", "--upgrade", "--explain"],
    ["--check", "--all"],
    ["-o", "a/pylock.toml", "-o", "b/pylock.toml", "x"],  # the last one wins, as in click
    ["--", "-odd-name"],
    ["--lock-dir", "/tmp/locks", "--driver", "550.54.14", "--torch-index", "nju", "p"],
]
REFUSED = [
    ["--help"],
    ["p", "--no-such-flag"],
    ["p", "--task", "train"],  # not a choice
    ["p", "--gpus", "two"],
    ["p", "-o"],  # no value
    ["p", "--explain=yes"],
    ["-opylock.toml", "p"],
    ["a", "b"],
]


def _typer_kwargs(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict | None:
    """What typer hands the lock body for `provision lock ARGV` (None: typer refuses it)."""
    from provision.cli.app import app

    seen: list[dict] = []
    monkeypatch.setattr(lock_run, "run", lambda *a, **k: seen.append(_named(a, k)))
    try:
        app(["lock", *argv], standalone_mode=False)
    except Exception:  # click's usage errors
        return None
    return seen[0] if seen else None


def _named(args: tuple, kwargs: dict) -> dict:
    return dict(BODY.bind(*args, **kwargs).arguments)


@pytest.mark.parametrize("argv", TAKEN)
def test_the_quick_reader_takes_what_typer_takes_the_same_way(argv, monkeypatch):
    for name in ("PROVISION_LOCK_DIR", "PROVISION_PROFILES_DIR"):
        monkeypatch.delenv(name, raising=False)
    mine = quick.parse(GRAMMAR, argv, {})
    assert mine is not None, argv
    assert mine == _typer_kwargs(argv, monkeypatch), argv


@pytest.mark.parametrize("argv", REFUSED)
def test_what_the_quick_reader_is_unsure_of_goes_to_typer(argv):
    assert quick.parse(GRAMMAR, argv, {}) is None, argv


def test_environment_variables_are_read_as_typer_reads_them(monkeypatch):
    env = {"PROVISION_LOCK_DIR": "/srv/locks", "PROVISION_PROFILES_DIR": "/srv/profiles"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mine = quick.parse(GRAMMAR, ["p"], env)
    assert mine is not None and mine["lock_dir"] == "/srv/locks"
    assert mine == _typer_kwargs(["p"], monkeypatch)
    given = quick.parse(GRAMMAR, ["p", "--lock-dir", "here"], env)
    assert given is not None and given["lock_dir"] == "here"
    assert quick.parse(GRAMMAR, ["p"], {"PROVISION_LOCK_DIR": ""}) is None  # typer decides


def test_the_body_takes_the_names_the_grammar_gives():
    names = [p["name"] for p in GRAMMAR["arguments"] + GRAMMAR["options"]]
    assert sorted(names) == sorted(BODY.parameters)


def test_a_lock_runs_without_importing_typer(tmp_path):
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('TYPER', 'typer' in sys.modules))\n"
        "sys.argv = ['provision', *sys.argv[1:]]\n"
        "from provision.cli.main import entry\n"
        "entry()\n"
    )
    args = ["lock", "--check", "smolvlm-256m", "--lock-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 1 and "TYPER False" in done.stdout, done.stdout + done.stderr
    assert "stale" in done.stdout + done.stderr  # no lock there yet: the check says so
    helped = subprocess.run(
        [sys.executable, "-c", code, "lock", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "TYPER True" in helped.stdout
    assert "--variant" in helped.stdout
