"""Issue 17: a re-lock with the same arguments starts uv on the last run's input as soon as the
command line is read, before typer or the lock modules are imported (provision/lock/early.py);
the lock adopts that uv only when its own input is exactly the same, and otherwise stops it and
resolves its own. Nothing secret is stored."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from provision.lock import early
from tests.cli_helpers import envelope_of, invoke
from tests.lock.conftest import TASKS, write_profile
from tests.lock.test_overlap import uv_children

ARGS = ("lock", "tiny-vl", "--variant", "pypi")


@pytest.fixture
def cache(lock_env, tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    yield folder / "provision" / "lock-starts"
    early.close()


def _lock(*extra: str) -> dict:
    proc = invoke(*ARGS, *extra, "--json")
    doc = envelope_of(proc)
    assert proc.returncode == 0, proc.stderr
    return doc["result"]


def test_a_relock_adopts_the_uv_started_from_the_last_input(lock_env, cache):
    first = _lock()
    assert first["resolution"]["started_early"] is False
    entries = list(cache.iterdir())
    assert len(entries) == 1
    stored = json.loads(entries[0].read_text())
    assert stored["command"][:2] == ["pip", "compile"] and "tinylib==1.0" in stored["pyproject"]
    lock = Path(first["path"])
    before = lock.read_bytes()
    again = _lock()
    assert again["resolution"]["started_early"] is True
    assert lock.read_bytes() == before  # the same lock, byte for byte
    assert not uv_children()
    invoke(*ARGS, "--explain")  # other arguments: stored apart
    explained = invoke(*ARGS, "--explain")
    assert "uv was started as soon as the command line was read" in explained.stdout
    assert "uv was started" not in invoke(*ARGS).stdout  # a plain re-lock does not say it


def test_a_changed_input_stops_the_early_uv_and_locks_its_own(lock_env, cache, monkeypatch):
    _lock()
    # the profile now asks for one more package: uv's input is not the stored one
    write_profile(lock_env["profiles"], tasks={**TASKS, "infer": [*TASKS["infer"], "einops"]})
    changed = _lock()
    assert changed["resolution"]["started_early"] is False
    assert 'name = "einops"' in Path(changed["path"]).read_text()  # uv resolved the new input
    assert not uv_children()
    assert "einops" in next(cache.iterdir()).read_text()  # stored for next time
    assert _lock()["resolution"]["started_early"] is True


def test_a_run_that_fails_before_resolving_stops_the_early_uv(
    lock_env, cache, monkeypatch, tmp_path
):
    _lock()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (lock_env["profiles"] / "tiny-vl.toml").unlink()
    proc = invoke(*ARGS)
    assert proc.returncode == 2 and "tiny-vl" in proc.stderr
    assert not uv_children()
    assert list(scratch.iterdir()) == []


def test_a_damaged_entry_is_no_guess(lock_env, cache):
    _lock()
    entry = next(cache.iterdir())
    stored = json.loads(entry.read_text())
    elsewhere = [*stored["command"], "-o", str(lock_env["tmp"] / "elsewhere")]
    for text in (
        "{not json",
        json.dumps({**stored, "command": ["sh"]}),
        json.dumps({**stored, "key": "other arguments"}),
        json.dumps({**stored, "command": elsewhere}),  # uv would write outside its folder
        json.dumps({**stored, "command": [*stored["command"], "--python", "/bin/sh"]}),
    ):
        entry.write_text(text)
        assert _lock()["resolution"]["started_early"] is False
    assert not (lock_env["tmp"] / "elsewhere").exists()
    assert _lock()["resolution"]["started_early"] is True  # rewritten by the run before


def test_uv_starts_before_typer_and_the_lock_modules_are_imported(lock_env, cache):
    """In a fresh process: the first process started is uv, while neither typer nor the lock
    modules are loaded yet."""
    code = (
        "import subprocess, sys\n"
        "real = subprocess.Popen.__init__\n"
        "seen = []\n"
        "def spy(self, *a, **k):\n"
        "    seen.append('typer' in sys.modules or 'provision.lock.locking' in sys.modules)\n"
        "    real(self, *a, **k)\n"
        "subprocess.Popen.__init__ = spy\n"
        f"sys.argv = ['provision', *{list(ARGS)!r}]\n"
        "from provision.cli.main import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print('TYPER-AT-POPEN', seen)\n"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TYPER-AT-POPEN [True]" in first.stdout, first.stderr[-800:]  # nothing stored yet
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TYPER-AT-POPEN [False]" in proc.stdout, proc.stdout[-800:] + proc.stderr[-800:]


def test_credentials_never_reach_the_stored_input(cache):
    """An input resolved with credentials (they go to uv in its environment) is not stored, nor
    is one whose text still holds a URL with userinfo."""
    args = ["lock", "x"]
    command = ["pip", "compile", "--default-index", "default=https://pypi.example/simple"]
    for saveable, url in ((False, "https://pypi.example/simple"), (True, "https://u:pw@h/simple")):
        early._current = early.EarlyStart(args, None)
        pyproject = f'[tool.uv]\nindex = [{{ name = "torch", url = "{url}" }}]\n'
        assert early.claim("uv", command, pyproject, {}, None, saveable) is None
        early.save()
        assert not cache.exists() or not list(cache.iterdir())
    early._current = early.EarlyStart(args, None)
    early.claim("uv", command, "[project]\n", {}, None, True)
    early.save()
    stored = next(cache.iterdir())
    assert "pw" not in stored.read_text()
    # the same arguments resolved with credentials later: what was stored goes
    early._current = early.EarlyStart(args, json.loads(stored.read_text()))
    early.claim("uv", command, "[project]\n", {"UV_INDEX_X_PASSWORD": "pw"}, None, False)
    early.save()
    assert not stored.exists()


def test_a_stored_input_that_would_run_uv_otherwise_is_refused():
    """The shape check before uv runs on a stored input: `pip compile` with the arguments
    compile_command gives and no others, output into its own temporary folder only, no
    configuration file, no interpreter but this one, and these very arguments."""
    from provision.lock.indexes import Index, IndexConfig
    from provision.lock.resolve import compile_command

    _, key = early._key(["lock", "x"])
    config = IndexConfig(
        Index("default", "https://pypi.org/simple", "default"),
        extras=[Index("extra-1", "https://mirror.example/simple", "pip")],
        find_links=[("/wheels", "pip")],
    )
    made = compile_command("3.11", "x86_64-manylinux_2_28", config)
    good = {"key": key, "pyproject": "[project]\n", "previous": None, "command": made}
    assert early._valid(good, key)
    assert early._valid({**good, "command": [*made, "--python", sys.executable]}, key)
    bad_commands = [
        ["sh", "-c", "true"],
        [*made, "-o", "/tmp/elsewhere"],
        [
            ("/tmp/elsewhere" if prev == "--output-file" else m)
            for prev, m in zip(["", *made[:-1]], made, strict=True)
        ],
        [*made, "--output-file", "pylock.toml"],
        [*made, "--python", "/bin/sh"],
        [*made, "--python"],
        [*made, "--config-file", "/tmp/uv.toml"],
        [*made, "--cache-dir", "/tmp/elsewhere"],
        [m for m in made if m != "--no-config"],
        [*made, "--format", "requirements.txt"],
        [*made, 3],
    ]
    for command in bad_commands:
        assert not early._valid({**good, "command": command}, key), command
    assert not early._valid({**good, "key": "other"}, key)
    assert not early._valid({**good, "previous": 1}, key)
    assert not early._valid([good], key)
