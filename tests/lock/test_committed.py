"""The committed lockfiles: one per built-in profile and task, valid PEP 751, fresh, checked
without network; and the CLI stays light (no resolver code imported at start-up)."""

from __future__ import annotations

import sys

import pytest

from provision.lock.lockfile import lock_path
from provision.lock.locking import builtin_lock_dir, check_builtins
from provision.lock.reader import lock_info
from provision.profiles import load_profile_file
from provision.resources import builtin_dir
from tests.cli_helpers import invoke

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTINS = [load_profile_file(p, True) for p in sorted(builtin_dir("profiles").glob("*.toml"))]
LOCKS = [(p, t, lock_path(p.name, builtin_lock_dir(), t)) for p in BUILTINS for t in p.tasks]


def test_every_builtin_profile_and_task_has_a_lock():
    missing = [str(path) for _, _, path in LOCKS if not path.is_file()]
    assert not missing
    assert {t for _, t, _ in LOCKS} >= {"infer", "lora", "qlora", "full"}


def test_check_all_passes_offline(offline, monkeypatch):
    monkeypatch.delenv("PROVISION_LOCK_DIR", raising=False)
    results = check_builtins()
    assert len(results) == len(LOCKS)
    assert [r for r in results if not r.fresh] == []


def test_check_all_cli_exit_code(monkeypatch):
    monkeypatch.delenv("PROVISION_LOCK_DIR", raising=False)
    proc = invoke("lock", "--check", "--all", env={"PROVISION_PROFILES_DIR": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the built-in directions' joint locks are checked too (provision direction lock --all)
    directions = len(list(builtin_dir("directions").glob("*.toml")))
    # Count the status words that start lines, not the word anywhere: the lines also hold file
    # paths, and a checkout in ~/fresh-clone/ holds "fresh" in every one of them.
    marks = [line.split()[0] for line in proc.stdout.splitlines() if line[:1].isalpha()]
    assert marks == ["fresh"] * (len(LOCKS) + directions), proc.stdout


@pytest.mark.parametrize(
    ("profile", "task", "path"), LOCKS, ids=[f"{p.name}-{t}" for p, t, _ in LOCKS]
)
def test_committed_lock_is_pep751_pypi_route(profile, task, path):
    from packaging.pylock import Pylock

    data = tomllib.loads(path.read_text())
    lock = Pylock.from_dict(data)
    info = lock_info(path)
    pin = next(p for p in profile.task(task).packages if p.startswith("torch=="))
    assert info.version_of("torch") == pin.split("==")[1]  # PyPI's build: no local label
    assert info.target["route"] == "pypi" and info.indexes["default"] == "https://pypi.org/simple"
    assert info.profile == profile.name and info.task == task
    urls = [w.url for p in lock.packages for w in (p.wheels or [])]
    urls += [p.sdist.url for p in lock.packages if p.sdist]
    assert urls and all(u.startswith("https://files.pythonhosted.org/") for u in urls)
    assert all(p.wheels or p.sdist for p in lock.packages)
    sdist_only = [d.name for d in info.packages if d.sdist_only]
    if "deepspeed" in sdist_only:
        assert info.env["DS_BUILD_OPS"] == "0"


def test_lock_target_reads_the_target_table_and_nothing_without_a_lock(tmp_path) -> None:
    from provision.lock.locking import kept_variant, lock_target

    shipped = builtin_lock_dir() / "pylock.qwen2-vl-2b.toml"
    assert lock_target(shipped) == lock_info(shipped).target
    assert lock_target(shipped)["route"] == "pypi" and kept_variant(shipped) == "pypi"
    broken = tmp_path / "pylock.broken.toml"
    broken.write_text("not [toml", encoding="utf-8")
    assert lock_target(broken) == {} and lock_target(tmp_path / "absent.toml") == {}
    assert lock_target(None) == {} and kept_variant(broken) is None
