"""Issue 17: `provision lock` starts uv as soon as uv's input is known and makes the rest of the
lock while uv resolves (on a second core): this machine's probe when the build is forced, the
previous lock's reading and parsing, the [tool.provision] parts that do not need uv's answer.
What the lock records must not change for it, and a failure on either side stops the other."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from provision import tomlparse
from provision.errors import ProvisionError
from provision.lock.lockfile import read_lock, tool_table
from provision.lock.locking import lock_profile, read_old_lock, write_lock
from provision.lock.resolve import Resolution
from tests.hardware.test_probe import fake_pynvml

GPU = {"name": "NVIDIA GeForce RTX 4090", "total": 25757220864, "free": 25000000000, "cc": (8, 9)}


def uv_children() -> list[int]:
    """The uv processes this process started and has not yet waited for (read from /proc, no
    mock): one that has exited but is not reaped counts, since it was started all the same."""
    found = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if comm == "uv" and fields[1] == me:
            found.append(int(entry.name))
    return found


def _nvml_noting_uv(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """NVML (the one mocked boundary) with a driver and an RTX 4090; each probe notes which uv
    processes were running at that moment."""
    fake = fake_pynvml([GPU], driver="550.54.14", cuda=12040)
    seen: list[list[int]] = []
    real_init = fake.nvmlInit

    def init() -> None:
        seen.append(uv_children())
        real_init()

    fake.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return seen


def test_a_forced_build_probes_this_machine_while_uv_resolves(lock_env, fake_index, monkeypatch):
    seen = _nvml_noting_uv(monkeypatch)
    result = lock_profile("tiny-vl", variant="pypi")
    assert len(seen) == 1 and seen[0], "the driver was probed before uv started"
    # what the probe found is still recorded, as when it ran first
    target = tool_table(read_lock(result.path))["target"]
    assert target["planned_for_driver"] == "550.54.14"
    assert target["planned_for_gpus"] == ["NVIDIA GeForce RTX 4090"]
    assert result.facts.source == "NVML" and result.facts.min_cc == (8, 9)
    assert "Machine: driver 550.54.14, supports CUDA 12.4 (from NVML)" in " ".join(
        result.plan.choice.steps
    )
    assert (result.plan.variant, result.plan.index.route) == ("cu121", "pypi")
    assert not uv_children()


def test_a_build_chosen_from_the_driver_probes_before_uv(lock_env, fake_index, monkeypatch):
    seen = _nvml_noting_uv(monkeypatch)
    result = lock_profile("tiny-vl", torch_index=fake_index.torch_template)
    assert seen == [[]], "the variant needs the driver: uv cannot start before the probe"
    assert result.plan.variant == "cu124"
    assert read_lock(result.path)["packages"]


def test_a_failure_while_uv_runs_stops_uv_and_leaves_no_folder(
    lock_env, fake_index, monkeypatch, tmp_path
):
    """The probe fails (a malformed PROVISION_CUDA_DRIVER) after uv has started: the message is
    the probe's, uv is stopped, its folder removed, and no lock is written."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(ProvisionError) as caught:
        lock_profile("tiny-vl", variant="pypi", env={**os.environ, "PROVISION_CUDA_DRIVER": "5x"})
    assert "PROVISION_CUDA_DRIVER" in caught.value.message
    assert not uv_children()
    assert list(scratch.iterdir()) == []
    assert not (lock_env["locks"] / "pylock.tiny-vl.toml").exists()


HEADER = "# a header\n"
UV_TEXT = (
    'lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n\n'
    '[[packages]]\nname = "tinylib"\nversion = "1.0"\n'
)


def _table_with_smoke(ok: bool) -> str:
    smoke = "true" if ok else "false"
    return f'[tool.provision]\ntool-version = "0.1.0"\n\n[tool.provision.smoke]\nok = {smoke}\n'


def test_a_lock_rewritten_while_uv_ran_is_read_again(tmp_path):
    """The previous lock is read while uv runs, outside the file lock; if another process
    replaces it before this one writes, what that process recorded is what is carried over."""
    path = tmp_path / "pylock.toml"
    path.write_text(HEADER + UV_TEXT + "\n" + _table_with_smoke(False), encoding="utf-8")
    early = read_old_lock(path, HEADER)
    assert early.tool == {"tool": {"provision": {"tool-version": "0.1.0", "smoke": {"ok": False}}}}
    assert early.body is not None and early.body[1]["packages"][0]["name"] == "tinylib"
    # another `provision smoke` records its result meanwhile (an atomic replace)
    other = tmp_path / "other"
    other.write_text(HEADER + UV_TEXT + "\n" + _table_with_smoke(True), encoding="utf-8")
    os.replace(other, path)
    assert not early.current()
    resolution = Resolution(UV_TEXT, [], ["uv"], "0", 0.0, data=tomlparse.loads(UV_TEXT))
    carried: list[object] = []

    def merge(table: dict, old: object, same: bool) -> list[str]:
        carried.append((old, same))
        table.update(tool_table(old)) if old else None  # type: ignore[arg-type]
        return ["smoke"]

    kept = write_lock(path, HEADER, resolution, {}, merge, early)
    assert kept == ["smoke"]
    assert carried[0][1] is True
    assert tool_table(read_lock(path))["smoke"] == {"ok": True}
    assert read_lock(path)["packages"] == [{"name": "tinylib", "version": "1.0"}]


def test_a_lock_unchanged_since_it_was_read_is_not_read_again(tmp_path, monkeypatch):
    path = tmp_path / "pylock.toml"
    path.write_text(HEADER + UV_TEXT + "\n" + _table_with_smoke(True), encoding="utf-8")
    early = read_old_lock(path, HEADER)
    assert early.current()
    reads: list[Path] = []
    real = Path.read_text

    def spy(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", spy)
    resolution = Resolution(UV_TEXT, [], ["uv"], "0", 0.0, data=tomlparse.loads(UV_TEXT))
    seen: list[object] = []
    write_lock(path, HEADER, resolution, {}, lambda t, old, same: seen.append(same) or [], early)
    assert path not in reads and seen == [True]
