"""The table of environment variables (provision/data/variables.toml) against the code that reads
them, and the typed reading that replaces bare int()/float() of the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.variables import env_value, variables
from tests.cli_helpers import invoke

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bPROVISION_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def _sources() -> list[Path]:
    """The package's code and the tests' shared code (servers, fixtures, tiny models)."""
    found = sorted((REPO / "provision").rglob("*.py"))
    found += sorted((REPO / "tests" / "servers").rglob("*.py"))
    found += [
        REPO / "tests" / "conftest.py",
        REPO / "tests" / "tinymodels.py",
        REPO / ".ci" / "run",
    ]
    return found


def test_every_provision_variable_in_the_code_is_in_the_table():
    table = variables()
    missing = {}
    for path in _sources():
        for name in NAME.findall(path.read_text(encoding="utf-8")):
            if name not in table:
                missing.setdefault(name, path.relative_to(REPO).as_posix())
    assert not missing, (
        f"variables read but not in provision/data/variables.toml: {missing}; add a row, then "
        "run `python -m provision.cli.reference --write`"
    )


def test_every_row_names_files_that_really_use_it():
    from provision.lock.indexes import _KEYS

    # pip's settings are read as "PIP_" + the pip.conf key, as pip does: those names are built.
    built = {"PIP_" + key.upper().replace("-", "_") for key in _KEYS}
    for var in variables().values():
        for rel in (m.strip() for m in var.read_by.split(",")):
            path = REPO / rel
            assert path.is_file(), (
                f"{var.name}: read_by names {rel}, which does not exist (moved? update its row in "
                "provision/data/variables.toml, then `python -m provision.cli.reference --write`)"
            )
            if var.name in built and rel == "provision/lock/indexes.py":
                continue
            assert var.name in path.read_text(encoding="utf-8"), f"{var.name} not in {rel}"
    assert {v.name for v in variables().values() if v.group == "pip"} >= built


def test_secret_rows_are_exactly_the_names_the_secret_filter_drops():
    from provision.settings import SECRET_NAMES

    for var in variables().values():
        assert bool(SECRET_NAMES.search(var.name)) == var.secret, var.name


def test_numbers_take_the_tables_default_and_bounds():
    assert env_value("PROVISION_DOWNLOAD_WORKERS", {}) == 8
    assert env_value("PROVISION_RETRIES", {"PROVISION_RETRIES": " 2 "}) == 2
    assert env_value("PROVISION_PROBE_TIMEOUT", {"PROVISION_PROBE_TIMEOUT": ""}) == 3.0
    assert env_value("PROVISION_RETRY_WAIT", {"PROVISION_RETRY_WAIT": "0"}) == 0.0
    for name, bad in [
        ("PROVISION_DOWNLOAD_WORKERS", "0"),
        ("PROVISION_DOWNLOAD_WORKERS", "2.5"),
        ("PROVISION_RETRIES", "many"),
        ("PROVISION_PROBE_TIMEOUT", "-1"),
        ("PROVISION_PROBE_TIMEOUT", "nan"),
        ("PROVISION_RETRY_WAIT", "inf"),
    ]:
        with pytest.raises(ProvisionError) as caught:
            env_value(name, {name: bad})
        assert name in caught.value.message and name in (caught.value.hint or "")
        assert caught.value.exit_code == 2
    with pytest.raises(TypeError):
        env_value("PROVISION_DATA_DIR", {})


@pytest.mark.parametrize("value", ["abc", "0"])
def test_a_bad_worker_count_is_one_message_not_a_traceback(tmp_path, value):
    # Before the table, `int(os.environ[...])` raised ValueError out of `provision download`
    # (a traceback), and 0 reached ThreadPoolExecutor.
    proc = invoke(
        "download",
        "qwen2-vl-2b",
        "--source",
        str(tmp_path),
        env={
            "PROVISION_DOWNLOAD_WORKERS": value,
            "PROVISION_DATA_DIR": str(tmp_path),
            "HF_HOME": str(tmp_path / "hf"),
        },
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "PROVISION_DOWNLOAD_WORKERS" in proc.stderr and "at least 1" in proc.stderr


def test_defaults_the_table_states_are_the_ones_the_code_uses(tmp_path, monkeypatch):
    from provision.docker.wheelhouse import cache_dir
    from provision.hub.sources import source_table
    from provision.lock.lockfile import lock_dir

    table = variables()
    assert table["PROVISION_SOURCES"].default == ",".join(source_table()["auto_order"])
    for name in ("PROVISION_LOCK_DIR", "PROVISION_WHEEL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert str(lock_dir(None)) == table["PROVISION_LOCK_DIR"].default
    assert cache_dir() == Path(table["PROVISION_WHEEL_CACHE"].default).expanduser()
