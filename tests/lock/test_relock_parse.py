"""Re-locking reads the previous lock once, and reads only its `[tool.provision]` part when uv gave
the same packages back byte for byte (issue 17: TOML parsing was 38 ms of each lock). What is
carried over must be what a parse of the whole file gives, in every case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision import tomlparse
from provision.lock.lockfile import read_lock, tool_table
from provision.lock.locking import lock_profile, package_set, previous_lock

BODY = (
    "# a header\n"
    'lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n\n'
    '[[packages]]\nname = "tinylib"\nversion = "1.0"\n\n'
)
TOOL = '[tool.provision]\ntool-version = "0.1.0"\n\n[tool.provision.smoke]\nok = true\n'
PACKAGES = {("tinylib", "1.0")}


def _whole(path: Path) -> dict:
    return tomlparse.loads(path.read_text(encoding="utf-8"))


def _parsed_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = tomlparse.loads

    def spy(text: str) -> dict:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(tomlparse, "loads", spy)
    return seen


def test_same_body_parses_only_the_tool_part(tmp_path, monkeypatch):
    path = tmp_path / "pylock.toml"
    path.write_text(BODY + TOOL, encoding="utf-8")
    seen = _parsed_texts(monkeypatch)
    old, same = previous_lock(path, BODY, PACKAGES)
    assert seen == [TOOL]
    assert same is True
    assert (
        tool_table(old)
        == tool_table(_whole(path))
        == {"tool-version": "0.1.0", "smoke": {"ok": True}}
    )


@pytest.mark.parametrize(
    "text, same",
    [
        # uv answered with other packages: the whole file is read, and they differ
        (BODY.replace('version = "1.0"', 'version = "2.0"') + TOOL, False),
        # a package added by hand after provision's table: part of the file, so not "the same"
        (BODY + TOOL + '\n[[packages]]\nname = "extra"\nversion = "1"\n', False),
        # another header (another provision version wrote it), same packages
        (BODY.replace("# a header", "# another header") + TOOL, True),
    ],
)
def test_other_files_are_parsed_whole(tmp_path, monkeypatch, text, same):
    path = tmp_path / "pylock.toml"
    path.write_text(text, encoding="utf-8")
    seen = _parsed_texts(monkeypatch)
    old, same_packages = previous_lock(path, BODY, PACKAGES)
    assert seen[-1] == text
    assert old == _whole(path)
    assert same_packages is same
    assert same_packages == (package_set(_whole(path)) == PACKAGES)


@pytest.mark.parametrize(
    "text", ["", "not = [toml", BODY + TOOL + "[tool.provision]\nagain = 1\n", None]
)
def test_missing_or_broken_previous_lock_is_none(tmp_path, text):
    path = tmp_path / "pylock.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    old, same = previous_lock(path, BODY, PACKAGES)
    assert old == ({} if text == "" else None)  # an empty file is an empty TOML document
    assert same is False


def test_relock_with_the_same_answer_parses_the_packages_once_while_uv_runs(
    lock_env, fake_index, monkeypatch
):
    """A real re-lock: uv's part comes back byte for byte, the smoke result recorded into the lock
    is kept, and the packages are parsed once in all: the previous lock's, while uv resolves
    (issue 17), and uv's identical answer not again."""
    from provision.lock import resolve as resolve_module
    from tests.lock.test_overlap import uv_children

    common = {"env": {**os.environ, "PROVISION_CUDA_DRIVER": "535.104.05"}}
    first = lock_profile("tiny-vl", **common)
    text = first.path.read_text(encoding="utf-8")
    assert text.count("[tool.provision.smoke]\n") == 1
    # what `provision smoke` records, written the way tomli_w writes it
    first.path.write_text(
        text.replace("[tool.provision.smoke]\n", "[tool.provision.smoke]\nok = true\n")
    )
    seen = _parsed_texts(monkeypatch)
    during: list[bool] = []
    real = resolve_module.parse_toml

    def spy_resolve(text: str) -> dict:  # resolve.py's own name for the parser
        seen.append(text)
        return real(text)

    monkeypatch.setattr(resolve_module, "parse_toml", spy_resolve)
    real_loads = tomlparse.loads

    def note(text: str) -> dict:
        if "[[packages]]" in text or text.startswith("[tool.provision]"):
            during.append(bool(uv_children()))
        return real_loads(text)

    monkeypatch.setattr(tomlparse, "loads", note)
    again = lock_profile("tiny-vl", **common)
    assert again.resolution.text == first.resolution.text
    assert "smoke" in again.kept
    assert tool_table(read_lock(again.path))["smoke"] == {"ok": True}
    package_texts = [t for t in seen if "[[packages]]" in t]
    assert len(package_texts) == 1, "the packages were parsed more than once"
    assert package_texts[0].rstrip("\n") == first.resolution.text.rstrip("\n")
    assert during and all(during), "the previous lock was parsed after uv had finished"
    assert any(t.startswith("[tool.provision]\n") for t in seen)
    assert again.resolution.data == first.resolution.data
