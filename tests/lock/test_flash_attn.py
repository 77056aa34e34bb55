"""flash-attn in a lock, with the real uv against the local index: never resolved from PyPI's
source archive; the release wheel for the locked torch is recorded in [tool.provision.attention],
or the sdpa fallback with its reason, and both are said in the lock's output."""

from __future__ import annotations

import os

from provision.lock.lockfile import read_lock, tool_table
from provision.lock.locking import check_lock, lock_profile
from tests.cli_helpers import invoke, invoke_json
from tests.lock.conftest import TASKS, write_profile

CU124_DRIVER = {"PROVISION_CUDA_DRIVER": "550.54.14"}
WHEEL = "flash_attn-2.7.4.post1+cu12torch2.4cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"


def _with_flash_attn(lock_env, pin: str = "flash-attn==2.7.4.post1") -> None:
    write_profile(lock_env["profiles"], tasks={**TASKS, "infer": [*TASKS["infer"], pin]})


def test_cuda_lock_records_the_release_wheel_and_locks_its_dependency(lock_env, fake_index):
    _with_flash_attn(lock_env)
    result = lock_profile(
        "tiny-vl", env={**os.environ, **CU124_DRIVER}, torch_index=fake_index.torch_template
    )
    data = read_lock(result.path)
    names = {p["name"] for p in data["packages"]}
    assert "flash-attn" not in names  # nothing from PyPI's sdist, nothing to compile
    assert "einops" in names  # its dependency is locked like any other
    attention = tool_table(data)["attention"]
    assert attention["implementation"] == "flash_attention_2"
    assert attention["version"] == "2.7.4.post1" and attention["wheel"] == WHEEL
    assert attention["url"].endswith(f"/v2.7.4.post1/{WHEEL}")
    assert attention["reason"] == "torch 2.4 cu124 (CUDA 12), Python 3.11, C++11 ABI FALSE"
    assert any(WHEEL in note for note in result.resolution.notes)
    assert result.to_json()["resolution"]["attention"]["wheel"] == WHEEL
    assert check_lock("tiny-vl").fresh


def test_cpu_lock_falls_back_to_sdpa_by_name_in_output_and_lock(lock_env, fake_index):
    _with_flash_attn(lock_env)
    proc = invoke("lock", "tiny-vl", "--torch-index", fake_index.torch_template)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "flash-attn==2.7.4.post1: no release wheel fits" in out
    assert "attention falls back to sdpa" in out and "nothing is compiled" in out
    table = tool_table(read_lock(lock_env["locks"] / "pylock.tiny-vl.toml"))
    assert table["attention"]["implementation"] == "sdpa"
    assert "cpu build" in table["attention"]["reason"]
    assert "wheel" not in table["attention"]


def test_a_changed_flash_attn_pin_stales_the_lock(lock_env, fake_index):
    _with_flash_attn(lock_env)
    lock_profile("tiny-vl", variant="pypi")  # PyPI's torch 2.4.0 here is the cu121 build
    table = tool_table(read_lock(lock_env["locks"] / "pylock.tiny-vl.toml"))
    assert table["attention"]["wheel"].startswith("flash_attn-2.7.4.post1+cu12torch2.4")
    assert check_lock("tiny-vl").fresh
    _with_flash_attn(lock_env, "flash-attn==2.6.3")
    code, payload = invoke_json("lock", "--check", "tiny-vl")
    assert code == 1
    assert "flash-attn is locked at 2.7.4.post1, the profile pins 2.6.3" in payload[0]["reasons"]
    # re-locking picks 2.6.3's wheel (its CUDA tag was major and minor then: cu123)
    lock_profile("tiny-vl", variant="pypi")
    table = tool_table(read_lock(lock_env["locks"] / "pylock.tiny-vl.toml"))
    assert table["attention"]["wheel"].startswith("flash_attn-2.6.3+cu123torch2.4cxx11abiFALSE")
    assert check_lock("tiny-vl").fresh


def test_a_lock_without_flash_attn_has_no_attention_table_and_drops_an_old_one(
    lock_env, fake_index
):
    _with_flash_attn(lock_env)
    lock_profile("tiny-vl", variant="pypi")
    write_profile(lock_env["profiles"])
    assert not check_lock("tiny-vl").fresh
    lock_profile("tiny-vl", variant="pypi")
    assert "attention" not in tool_table(read_lock(lock_env["locks"] / "pylock.tiny-vl.toml"))


def test_a_range_is_locked_to_the_newest_release_in_it_and_checked_against_it(lock_env, fake_index):
    _with_flash_attn(lock_env, "flash-attn>=2.6,<2.8")
    lock_profile("tiny-vl", variant="pypi")
    table = tool_table(read_lock(lock_env["locks"] / "pylock.tiny-vl.toml"))
    assert table["attention"]["version"] == "2.7.4.post1"
    assert check_lock("tiny-vl").fresh
    _with_flash_attn(lock_env, "flash-attn>=2.8")
    reasons = check_lock("tiny-vl").reasons
    assert "flash-attn is locked at 2.7.4.post1, the profile asks for flash-attn>=2.8" in reasons


def test_an_unknown_flash_attn_release_is_one_message_before_uv_runs(lock_env, fake_index):
    _with_flash_attn(lock_env, "flash-attn==2.5.0")
    proc = invoke("lock", "tiny-vl", "--variant", "pypi")
    assert proc.returncode == 2
    assert "No flash-attn release whose wheels provision knows satisfies" in proc.stderr
    assert "Traceback" not in proc.stderr and "uv" not in proc.stderr.split("\n")[0]
