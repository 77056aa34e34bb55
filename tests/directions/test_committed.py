"""The committed direction locks (made by `provision direction lock --all`): valid PEP 751,
resolved against PyPI only, fresh without network, and checked by `provision lock --check`."""

from __future__ import annotations

import pytest

from provision.directions import builtin_directions
from provision.directions.lock import check_builtin_directions, direction_lock_path
from provision.lock.locking import builtin_lock_dir
from provision.lock.reader import lock_info
from tests.cli_helpers import run_cli
from tests.directions.helpers import read_toml

DIRECTIONS = builtin_directions()


def test_every_builtin_direction_has_a_fresh_lock_checked_offline(offline, monkeypatch):
    monkeypatch.delenv("PROVISION_LOCK_DIR", raising=False)
    monkeypatch.setenv("PROVISION_PROFILES_DIR", "")  # built-in members, whatever a user has
    results = check_builtin_directions()
    assert [r.profile for r in results] == [d.name for d in DIRECTIONS]
    assert [r for r in results if not r.fresh] == []


def test_provision_lock_check_covers_direction_locks(monkeypatch):
    monkeypatch.delenv("PROVISION_LOCK_DIR", raising=False)
    proc = run_cli("lock", "--check", env={"PROVISION_PROFILES_DIR": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    for direction in DIRECTIONS:
        assert f"pylock.direction-{direction.name}.toml ({direction.name}, direction)" in out


@pytest.mark.parametrize("direction", DIRECTIONS, ids=[d.name for d in DIRECTIONS])
def test_committed_direction_lock_is_pep751_on_pypi_with_every_member(direction):
    from packaging.pylock import Pylock

    path = direction_lock_path(direction.name, builtin_lock_dir())
    data = read_toml(path)
    lock = Pylock.from_dict(data)
    urls = [w.url for p in lock.packages for w in (p.wheels or [])]
    urls += [p.sdist.url for p in lock.packages if p.sdist]
    assert urls and all(u.startswith("https://files.pythonhosted.org/") for u in urls)
    table = data["tool"]["provision"]
    assert table["kind"] == "direction"
    assert table["direction"]["members"] == direction.member_names
    assert table["indexes"]["default"] == "https://pypi.org/simple"
    assert table["target"]["route"] == "pypi"
    info = lock_info(path)
    fixes = set()
    for profile, member in zip(direction.profiles(), direction.members, strict=True):
        entry = table["members"][profile.name]
        assert entry["tasks"] == list(member.tasks)
        assert entry["model"]["repo_id"] == profile.hf_repo
        fixes |= set(profile.fixes)
        for task in member.tasks:
            for requirement in profile.task(task).packages:
                if "==" in requirement:
                    name, version = requirement.split("==")
                    assert info.version_of(name) == version, (profile.name, task, requirement)
    assert set(table["fixes"]["apply"]) == fixes


def test_okvqa_direction_is_one_transformers_451_env_with_vllm_and_swift():
    info = lock_info(direction_lock_path("okvqa-vllm-swift", builtin_lock_dir()))
    assert info.version_of("transformers").startswith("4.51.")
    assert info.version_of("vllm") == "0.8.5" and info.version_of("ms-swift") == "3.4.1"
    assert info.version_of("datasets") == "3.3.2"  # the direction's own package


def test_internvl2_direction_holds_lmdeploy_and_xtuner_and_the_mmengine_pair():
    info = lock_info(direction_lock_path("internvl2-lmdeploy-xtuner", builtin_lock_dir()))
    assert info.version_of("lmdeploy") == "0.7.3" and info.version_of("xtuner") == "0.1.23"
    # The direction file explains why these two may share: same version, same files.
    assert info.version_of("mmengine") == info.version_of("mmengine-lite") == "0.10.7"


def test_internvl2_direction_installs_lmdeploy_s_gradio_demo_and_deepspeed():
    """What the InternVL2 seeds ran besides the stacks: `lmdeploy serve gradio` (whose demo uses
    gr.Chatbot's tuples format, gone in gradio 6) and DeepSpeed for XTuner's ZeRO configs, an
    sdist locked without building it and built at install with DS_BUILD_OPS=0."""
    from packaging.version import Version

    path = direction_lock_path("internvl2-lmdeploy-xtuner", builtin_lock_dir())
    info = lock_info(path)
    assert Version("5") <= Version(info.version_of("gradio")) < Version("6")
    assert info.version_of("deepspeed") == "0.16.7"
    data = read_toml(path)
    deepspeed = next(p for p in data["packages"] if p["name"] == "deepspeed")
    assert "sdist" in deepspeed and not deepspeed.get("wheels")
    assert data["tool"]["provision"]["env"]["DS_BUILD_OPS"] == "0"


def test_okvqa_direction_installs_flash_attn_from_its_release_wheel_and_deepspeed():
    """ms-swift's --attn_impl flash_attn and --deepspeed, as the OK-VQA seeds ran them: flash-attn
    is the release wheel for the lock's torch (PyPI's 2.6.0 = cu124, pre-C++11 ABI) and Python,
    never PyPI's source archive; DeepSpeed is its sdist, built at install with DS_BUILD_OPS=0."""
    path = direction_lock_path("okvqa-vllm-swift", builtin_lock_dir())
    data = read_toml(path)
    names = {p["name"] for p in data["packages"]}
    assert "flash-attn" not in names and "einops" in names
    attention = data["tool"]["provision"]["attention"]
    assert attention["implementation"] == "flash_attention_2"
    assert attention["requested"] == "flash-attn==2.7.4.post1"
    wheel = "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"
    assert attention["wheel"] == wheel
    assert attention["url"] == (
        f"https://github.com/Dao-AILab/flash-attention/releases/download/v2.7.4.post1/{wheel}"
    )
    assert lock_info(path).version_of("deepspeed") == "0.16.7"
    assert data["tool"]["provision"]["env"]["DS_BUILD_OPS"] == "0"
