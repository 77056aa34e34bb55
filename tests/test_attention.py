"""flash-attn's wheel pick (provision/data/flash_attn_wheels.toml) and its sdpa fallback.

The expected file names are release assets that public install scripts download by name (e.g.
`pip install https://github.com/Dao-AILab/flash-attention/releases/download/v2.7.4.post1/
flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp311-cp311-linux_x86_64.whl`), so the pick is
checked against names that exist, not against the table it was made from.
"""

from __future__ import annotations

import pytest

from provision.attention import (
    FLASH_ATTENTION_2,
    is_flash_attn,
    pick_flash_attn,
    requested_versions,
    torch_cxx11_abi,
    wheel_table,
)
from provision.errors import ProvisionError
from provision.torch_select import variant_info

BASE = "https://github.com/Dao-AILab/flash-attention/releases/download"


def _pick(requirement: str, torch: str, variant: str, python: str, **kw):
    cuda = None if variant == "cpu" else variant_info(variant).cuda
    return pick_flash_attn(requirement, torch, variant, python, cuda=cuda, **kw)


@pytest.mark.parametrize(
    ("requirement", "torch", "variant", "python", "wheel"),
    [
        # torch 2.6.0 from PyPI is the cu124 build, without the C++11 ABI
        ("flash-attn==2.7.4.post1", "2.6.0", "cu124", "3.11",
         "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn==2.7.4.post1", "2.6.0", "cu118", "3.12", None),  # CUDA 11: not built
        ("flash_attn==2.7.4.post1", "2.4.1", "cu121", "3.10",
         "flash_attn-2.7.4.post1+cu12torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
        ("flash-attn==2.7.4.post1", "2.5.1", "cu124", "3.10",
         "flash_attn-2.7.4.post1+cu12torch2.5cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
        ("flash-attn==2.7.4.post1", "2.2.2", "cu121", "3.10",
         "flash_attn-2.7.4.post1+cu12torch2.2cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
        # 2.6's CUDA 12.6 build is the one 2.6 wheel with the C++11 ABI
        ("flash-attn==2.7.4.post1", "2.6.0", "cu126", "3.12",
         "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"),
        # before 2.7.0 the wheel's CUDA tag is major and minor (cu123, cu118)
        ("flash-attn==2.6.3", "2.4.0", "cu121", "3.11",
         "flash_attn-2.6.3+cu123torch2.4cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
        ("flash-attn==2.6.3", "2.3.1", "cu118", "3.10",
         "flash_attn-2.6.3+cu118torch2.3cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
        # torch 2.7 and later: the C++11 ABI throughout
        ("flash-attn==2.8.3", "2.7.1", "cu126", "3.12",
         "flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"),
        ("flash-attn==2.7.4.post1", "2.7.1", "cu128", "3.11", None),  # 2.7 came after it
        ("flash-attn==2.7.4.post1", "2.2.2", "cu121", "3.13", None),  # excluded in its matrix
        ("flash-attn==2.8.3", "2.9.0", "cu128", "3.12", None),  # a torch no release covers
    ],
)  # fmt: skip
def test_pick_for_torch_cuda_python(requirement, torch, variant, python, wheel):
    pick = _pick(requirement, torch, variant, python)
    if wheel is None:
        assert pick.implementation == "sdpa" and pick.fallback and pick.wheel is None
        assert f"torch {'.'.join(torch.split('.')[:2])}" in pick.reason
        assert "falls back to sdpa" in pick.note() and "nothing is compiled" in pick.note()
        return
    assert pick.implementation == FLASH_ATTENTION_2 and not pick.fallback
    assert pick.wheel == wheel
    assert pick.url == f"{BASE}/v{pick.version}/{wheel}"
    assert pick.requires == ("einops",)
    assert pick.source.startswith(f"Dao-AILab/flash-attention tag v{pick.version} (")


def test_unpinned_takes_the_newest_release_with_a_fitting_wheel():
    newest = max(wheel_table()["release"], key=lambda r: [int(x) for x in r["version"].split(".")
                                                            if x.isdigit()])  # fmt: skip
    pick = _pick("flash-attn", "2.6.0", "cu124", "3.11")
    assert pick.version == newest["version"] == "2.8.3.post1"
    # torch 2.3 left the matrix in 2.8: the newest release that still built it is chosen
    older = _pick("flash-attn", "2.3.1", "cu121", "3.11")
    assert older.version == "2.7.4.post1" and older.wheel.startswith("flash_attn-2.7.4.post1+cu12")


def test_cpu_torch_other_platforms_old_gpus_and_no_torch_fall_back_by_name():
    cpu = _pick("flash-attn==2.7.4.post1", "2.6.0", "cpu", "3.11")
    assert cpu.implementation == "sdpa" and "cpu build" in cpu.reason
    arm = _pick(
        "flash-attn==2.7.4.post1", "2.6.0", "cu124", "3.11", platform="aarch64-manylinux_2_28"
    )
    assert arm.fallback and "linux_x86_64 only" in arm.reason
    turing = _pick("flash-attn==2.7.4.post1", "2.6.0", "cu124", "3.11", min_cc=(7, 5))
    assert turing.fallback and "7.5" in turing.reason and "8.0" in turing.reason
    ampere = _pick("flash-attn==2.7.4.post1", "2.6.0", "cu124", "3.11", min_cc=(8, 6))
    assert not ampere.fallback
    none = pick_flash_attn("flash-attn", None, None, "3.11")
    assert none.fallback and "no torch" in none.reason
    table = cpu.table()
    assert table["implementation"] == "sdpa" and table["version"] == "2.7.4.post1"
    assert "wheel" not in table and "url" not in table


def test_requirement_forms():
    assert is_flash_attn("flash-attn==2.7.4.post1") and is_flash_attn("Flash_Attn")
    assert not is_flash_attn("flash-attn-triton") and not is_flash_attn("flashinfer")
    newest_first = requested_versions("flash-attn")
    assert newest_first[0] == "2.8.3.post1" and newest_first[-1] == "2.5.9.post1"
    assert requested_versions("flash_attn == 2.6.3") == ["2.6.3"]
    assert requested_versions("flash-attn>=2.7.4,<2.8") == ["2.7.4.post1"]
    with pytest.raises(ProvisionError, match="by version only"):
        requested_versions("flash-attn @ https://example.org/flash_attn-2.7.4.post1.whl")
    with pytest.raises(ProvisionError, match="by version only"):
        requested_versions("flash-attn==2.7.4.post1; sys_platform == 'linux'")
    with pytest.raises(ProvisionError, match="satisfies 'flash-attn==2.5.0'") as err:
        requested_versions("flash-attn==2.5.0")
    assert "flash_attn_wheels.toml" in err.value.hint


def test_a_range_takes_the_newest_release_in_it_with_a_fitting_wheel():
    pick = _pick("flash-attn>=2.6,<2.8", "2.6.0", "cu124", "3.11")
    assert pick.version == "2.7.4.post1" and not pick.fallback
    # 2.7.0.post2 .. 2.7.3 have no torch 2.6 (only a 2.6 nightly, left out): the range is searched
    older = _pick("flash-attn>=2.7,<2.7.4", "2.6.0", "cu124", "3.11")
    assert older.fallback and "no flash-attn release it accepts" in older.reason


def test_torch_abi_rules():
    assert torch_cxx11_abi("2.5.1", "cu124") is False
    assert torch_cxx11_abi("2.6.0", "cu124") is False
    assert torch_cxx11_abi("2.6.0", "cu126") is True
    assert torch_cxx11_abi("2.7.1", "cu118") is True
    assert torch_cxx11_abi("2.10.0", "cu128") is True  # 2.10 is after 2.7, not before


def test_every_release_row_is_complete_and_sourced():
    table = wheel_table()
    for release in table["release"]:
        assert release["source"].startswith(f"Dao-AILab/flash-attention tag v{release['version']}")
        assert release["python"] and release["torch"] and release["cuda"]
        assert set(release["cxx11_abi"]) <= {True, False}
        for rule in release.get("exclude", []):
            assert set(rule) <= {"torch", "python", "cuda"}
            assert rule.get("torch", release["torch"][0]) in release["torch"]
