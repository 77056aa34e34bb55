"""Environments made by uv from PEP 751 locks: create, leave alone, bring back, refuse bad input.

Real uv, real virtual environments, real wheels (built here, or resolved from PyPI where the case
needs a real index's lock). The offline cases use a private, empty uv cache so nothing can come
from an earlier test.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import tomli_w

from provision import envs
from provision.envs import ensure_env, env_python, installed_packages, python_for
from provision.errors import ProvisionError
from provision.lock.lockfile import read_lock
from provision.uv import uv_bin
from tests.envs.helpers import compile_lock, make_wheel, run_in, write_pylock

pytestmark = pytest.mark.slow


@pytest.fixture
def wheels(tmp_path: Path) -> dict[str, Path]:
    folder, other = tmp_path / "wheels", tmp_path / "other-wheels"
    return {
        "a1": make_wheel(folder, "demo-a", "1.0"),
        "b1": make_wheel(folder, "demo-b", "1.0"),
        "a2": make_wheel(other, "demo-a", "2.0"),
        "c1": make_wheel(other, "demo-c", "1.0"),
    }


@pytest.fixture
def lock(tmp_path: Path, wheels: dict[str, Path]) -> Path:
    pairs = [("demo-a", "1.0", wheels["a1"]), ("demo-b", "1.0", wheels["b1"])]
    return write_pylock(tmp_path / "lock" / "pylock.toml", pairs)


@pytest.fixture
def private_uv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "uv-cache"
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")  # an unreachable URL fails at once
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    return cache


def _uv_pip(*args: str) -> None:
    subprocess.run([uv_bin(), "pip", *args, "--quiet"], check=True, capture_output=True)


def test_create_then_nothing_to_do_then_drift_is_brought_back(
    tmp_path: Path, lock: Path, wheels: dict[str, Path]
) -> None:
    env = tmp_path / "env"
    first = ensure_env(env, lock)
    assert first.action == "created"
    assert sorted(first.installed) == ["demo-a==1.0", "demo-b==1.0"]
    assert installed_packages(env) == {"demo-a": "1.0", "demo-b": "1.0"}
    assert first.packages == 2 and first.python_version.startswith("3.")
    assert run_in(env_python(env), "import demo_a; print(demo_a.VERSION)").stdout.strip() == "1.0"

    again = ensure_env(env, lock)
    assert again.action == "unchanged"
    assert again.installed == again.removed == []
    assert "nothing to do" in again.message

    python = str(env_python(env))
    _uv_pip("uninstall", "--python", python, "demo-b")
    _uv_pip("install", "--python", python, str(wheels["a2"]), str(wheels["c1"]))
    assert installed_packages(env) == {"demo-a": "2.0", "demo-c": "1.0"}

    synced = ensure_env(env, lock)
    assert synced.action == "synced"
    assert sorted(synced.installed) == ["demo-a==1.0", "demo-b==1.0"]
    assert sorted(synced.removed) == ["demo-a==2.0", "demo-c==1.0"]
    assert synced.packages == 2
    assert installed_packages(env) == {"demo-a": "1.0", "demo-b": "1.0"}
    assert ensure_env(env, lock).action == "unchanged"


def test_two_runs_at_once_build_the_env_once(tmp_path: Path, lock: Path) -> None:
    env = tmp_path / "env"
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(ensure_env(env, lock).action)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(results) == ["created", "unchanged"]


def test_env_path_that_is_a_file_is_refused(tmp_path: Path, lock: Path) -> None:
    target = tmp_path / "env"
    target.write_text("my notes\n")
    with pytest.raises(ProvisionError) as err:
        ensure_env(target, lock)
    assert "is a file" in err.value.message and str(target) in err.value.message
    assert target.read_text() == "my notes\n"


def test_a_folder_that_is_not_an_env_is_left_alone(tmp_path: Path, lock: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ProvisionError) as err:
        ensure_env(target, lock)
    assert "not a virtual environment" in err.value.message
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_lock_for_another_platform(tmp_path: Path) -> None:
    mac = compile_lock(["pyyaml==6.0.3"], tmp_path / "mac", platform="aarch64-apple-darwin")
    env = tmp_path / "env"
    with pytest.raises(ProvisionError) as err:
        ensure_env(env, mac)
    message = err.value.message
    assert "made for another platform" in message
    assert "pyyaml 6.0.3" in message and "macosx" in message
    assert "provision lock" in (err.value.hint or "")
    assert not env.exists(), "nothing is left behind"


def test_lock_for_another_python(tmp_path: Path, lock: Path) -> None:
    env = tmp_path / "env"
    ensure_env(env, lock)
    newer = compile_lock(["six==1.17.0"], tmp_path / "py312", python="3.12")
    with pytest.raises(ProvisionError) as err:
        ensure_env(env, newer)
    assert "made for another Python" in err.value.message
    assert ">=3.12" in err.value.message and "3.11" in err.value.message
    assert installed_packages(env) == {"demo-a": "1.0", "demo-b": "1.0"}, "env untouched"


def test_wheels_only_for_another_python_are_refused_before_install(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "w", "demo-native", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64"
    )
    other = write_pylock(tmp_path / "l" / "pylock.toml", [("demo-native", "1.0", wheel)])
    env = tmp_path / "env"
    with pytest.raises(ProvisionError) as err:
        ensure_env(env, other, python="3.11")
    assert "made for another Python" in err.value.message
    assert "demo-native 1.0" in err.value.message and "cp312" in err.value.message
    assert not env.exists()


def test_python_that_is_not_on_the_machine(tmp_path: Path, lock: Path) -> None:
    env = tmp_path / "env"
    with pytest.raises(ProvisionError) as err:
        ensure_env(env, lock, python="3.99")
    assert "is for Python 3.99, which is not installed here" in err.value.message
    assert "never lets uv download" in (err.value.hint or "")
    assert not env.exists()


def test_a_lock_naming_a_python_not_installed_says_so_before_building(tmp_path: Path) -> None:
    """Issue 14, item 5: a provision lock for Python 3.10 on a machine with 3.11 only was built
    with 3.11 (the lock's requires-python ">=3.10" allows it) and failed on the cp310 wheels."""
    installed = envs.installed_pythons()  # what real uv finds here, never downloading
    assert installed, "uv finds no Python at all"
    missing = next(v for v in ("3.10", "3.12", "3.13", "3.9", "3.14") if v not in installed)
    tag = f"cp{missing.replace('.', '')}"
    wheel = make_wheel(
        tmp_path / "w", "demo-native", "1.0", tag=f"{tag}-{tag}-manylinux_2_17_x86_64"
    )
    # As `provision lock --python X` writes it: requires-python ">=X" and the target X.
    lock = write_pylock(
        tmp_path / "l" / "pylock.toml",
        [("demo-native", "1.0", wheel)],
        requires_python=f">={missing}",
    )
    data = read_lock(lock)
    data["tool"] = {"provision": {"target": {"python": missing, "platform": "x86_64-linux"}}}
    lock.write_text(tomli_w.dumps(data))
    env = tmp_path / "env"
    with pytest.raises(ProvisionError) as err:
        ensure_env(env, lock)
    message, hint = err.value.message, err.value.hint or ""
    assert f"pylock.toml is for Python {missing}, which is not installed here" in message
    assert f"installed: {', '.join(installed)}" in message and "nothing was built" in message
    assert f"uv python install {missing}" in hint and "provision lock PROFILE --python" in hint
    assert not env.exists()  # nothing created, nothing installed


def test_missing_wheel_offline_names_package_file_and_fix(
    tmp_path: Path, wheels: dict[str, Path], private_uv_cache: Path
) -> None:
    remote = write_pylock(
        tmp_path / "remote" / "pylock.toml",
        [("demo-a", "1.0", wheels["a1"])],
        url_base="https://wheels.invalid/files",
    )
    env = tmp_path / "env"
    with pytest.raises(ProvisionError) as err:
        ensure_env(env, remote, offline=True)
    assert "demo-a 1.0" in err.value.message
    assert "demo_a-1.0-py3-none-any.whl" in err.value.message and "offline" in err.value.message
    assert "--wheelhouse" in (err.value.hint or "")
    assert not env.exists(), "a half-made env is removed"

    with pytest.raises(ProvisionError) as err:
        ensure_env(env, remote)  # online, but the host does not resolve
    assert "Could not download demo-a==1.0" in err.value.message
    assert "https://wheels.invalid/files/demo_a-1.0-py3-none-any.whl" in err.value.message


def test_wheelhouse_serves_the_lock_offline(
    tmp_path: Path, wheels: dict[str, Path], private_uv_cache: Path
) -> None:
    pairs = [("demo-a", "1.0", wheels["a1"]), ("demo-b", "1.0", wheels["b1"])]
    remote = write_pylock(tmp_path / "remote" / "pylock.toml", pairs, url_base="https://x.invalid")
    result = ensure_env(tmp_path / "env", remote, wheelhouse=wheels["a1"].parent, offline=True)
    assert result.action == "created" and result.local_files == 2
    assert installed_packages(tmp_path / "env") == {"demo-a": "1.0", "demo-b": "1.0"}


def test_pip_find_links_is_honoured(
    tmp_path: Path, wheels: dict[str, Path], private_uv_cache: Path, monkeypatch
) -> None:
    remote = write_pylock(
        tmp_path / "remote" / "pylock.toml",
        [("demo-a", "1.0", wheels["a1"])],
        url_base="https://x.invalid",
    )
    monkeypatch.setenv("PIP_FIND_LINKS", f"/nonexistent {wheels['a1'].parent}")
    result = ensure_env(tmp_path / "env", remote, offline=True)
    assert result.action == "created"
    assert result.wheelhouse == [str(wheels["a1"].parent)]


def test_a_wheel_that_does_not_match_the_lock_hash_is_refused(
    tmp_path: Path, wheels: dict[str, Path], private_uv_cache: Path
) -> None:
    lock = write_pylock(
        tmp_path / "lock" / "pylock.toml",
        [("demo-a", "1.0", wheels["a1"])],
        url_base="https://x.invalid",
    )
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    # same file name and size, other content: a replaced copy in the wheelhouse
    other = make_wheel(tmp_path / "forged", "demo-a", "1.0", body="VERSION = '6.6'\n")
    assert other.stat().st_size == wheels["a1"].stat().st_size
    (swapped / other.name).write_bytes(other.read_bytes())
    with pytest.raises(ProvisionError) as err:
        ensure_env(tmp_path / "env", lock, wheelhouse=swapped, offline=True)
    assert "demo-a==1.0 does not match the hash" in err.value.message
    good = wheels["a1"].read_bytes()
    (swapped / wheels["a1"].name).write_bytes(good + b"\0")  # a truncated/extended copy
    with pytest.raises(ProvisionError) as err:
        ensure_env(tmp_path / "env", lock, wheelhouse=swapped, offline=True)
    assert "does not match the hash" in err.value.message


def test_not_a_lock(tmp_path: Path) -> None:
    bogus = tmp_path / "pylock.toml"
    bogus.write_text('name = "x"\n')
    with pytest.raises(ProvisionError) as err:
        ensure_env(tmp_path / "env", bogus)
    assert "not a PEP 751 lock" in err.value.message


def test_python_for_resolves_env_and_python_options(tmp_path: Path, lock: Path) -> None:
    env = tmp_path / "env"
    ensure_env(env, lock)
    assert python_for(env=env) == env / "bin" / "python"
    assert python_for(python=env / "bin" / "python") == env / "bin" / "python"
    with pytest.raises(ProvisionError, match="not both"):
        python_for(env=env, python=env / "bin" / "python")
    with pytest.raises(ProvisionError, match="is a folder"):
        python_for(python=env)
    with pytest.raises(ProvisionError, match="not a virtual environment"):
        python_for(env=tmp_path / "lock")
    with pytest.raises(ProvisionError, match="not found"):
        python_for(python=tmp_path / "nope" / "python")
    (tmp_path / "file").write_text("")
    with pytest.raises(ProvisionError, match="is a file"):
        env_python(tmp_path / "file")


def test_env_under_a_file_is_refused(tmp_path: Path, lock: Path) -> None:
    (tmp_path / "notes").write_text("x")
    with pytest.raises(ProvisionError) as err:
        ensure_env(tmp_path / "notes" / "env", lock)
    assert "Cannot create" in err.value.message and "notes" in err.value.message


def test_the_lock_readers_install_command_installs_exactly_the_lock(
    tmp_path: Path, lock: Path
) -> None:
    """`lock_info(...).install_command` (documented for use from Python) runs as given."""
    from provision.lock.reader import lock_info

    env = tmp_path / "by-hand"
    subprocess.run([uv_bin(), "venv", "-q", str(env)], check=True, capture_output=True)
    command = lock_info(lock).install_command(uv_bin(), env_python(env))
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert installed_packages(env) == {"demo-a": "1.0", "demo-b": "1.0"}


def test_envs_built_from_a_pypi_lock_leave_no_unreachable_copies_in_uv_s_cache(
    tmp_path: Path, private_uv_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = compile_lock(["six==1.17.0"], tmp_path / "lock")  # files.pythonhosted.org URLs

    def unpacked() -> int:
        return len(list((private_uv_cache / "archive-v0").iterdir()))

    # What uv 0.13 does on its own: each env from the lock unpacks the wheel into its cache
    # again and keeps no reference to it, so copies pile up (if this stops growing, uv has fixed
    # it and the prune can go).
    counts = []
    with monkeypatch.context() as m:
        m.setattr(envs, "prune_uv_cache", lambda *args, **kwargs: "")
        for i in range(3):
            ensure_env(tmp_path / f"raw{i}", lock)
            counts.append(unpacked())
    assert counts == [1, 2, 3]

    results, counts = [], []
    for i in range(3):
        results.append(ensure_env(tmp_path / f"env{i}", lock))
        counts.append(unpacked())
    assert all(r.action == "created" for r in results)
    assert results[0].cache_pruned.startswith("Removed"), results[0].cache_pruned
    assert results[0].to_json()["cache_pruned"] == results[0].cache_pruned
    assert max(counts) <= 1, counts  # no more than the one copy uv may still point at
    for root in [*(tmp_path / f"raw{i}" for i in range(3)), *(r.env for r in results)]:
        got = run_in(env_python(root), "import six; print(six.__version__)")
        assert got.stdout.strip() == "1.17.0"  # the envs keep their files (hard links)
    again = ensure_env(tmp_path / "env0", lock)
    assert again.action == "unchanged" and again.cache_pruned == ""  # nothing installed


def test_the_prune_is_skipped_when_the_install_unpacked_nothing_into_uv_s_cache(
    tmp_path: Path, private_uv_cache: Path, lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: a lock of local wheel files is unpacked into uv's cache once and reused after;
    a second environment from it adds packages but nothing to the cache, so no prune (its walk
    over the whole cache costs seconds on a cache of GBs)."""
    calls: list[str] = []
    real = envs.prune_uv_cache

    def counted(*args: object, **kwargs: object) -> str:
        said = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(said)
        return said

    monkeypatch.setattr(envs, "prune_uv_cache", counted)
    first = ensure_env(tmp_path / "env0", lock)
    archives = sorted((private_uv_cache / "archive-v0").iterdir())
    assert first.installed and archives  # uv unpacked the two wheels the first time
    first_calls = len(calls)
    second = ensure_env(tmp_path / "env1", lock)
    assert second.action == "created" and sorted(second.installed) == sorted(first.installed)
    assert sorted((private_uv_cache / "archive-v0").iterdir()) == archives
    assert len(calls) == first_calls and second.cache_pruned == ""  # no prune this time
    assert installed_packages(second.env) == {"demo-a": "1.0", "demo-b": "1.0"}
