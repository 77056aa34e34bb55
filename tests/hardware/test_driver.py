"""Driver facts in the order torch selection needs: override, NVML, /sys, /proc, nvidia-smi.

NVML is the one mocked boundary (no GPU here): the fake pynvml module from the probe tests; the
driver files come from tests/fixtures/nvidia, nvidia-smi output from its fixture files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.hardware import probe
from provision.hardware.driver import driver_facts
from provision.hardware.machine import Gpu, Machine
from provision.hardware.probe import parse_nvidia_smi_csv
from tests.hardware.test_probe import fake_pynvml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia"
GIB = 1024**3
EMPTY = FIXTURES / "does-not-exist"


def _smi():
    return parse_nvidia_smi_csv(
        (FIXTURES / "nvidia-smi-query-2xA100.csv").read_text(),
        (FIXTURES / "nvidia-smi-header-550.txt").read_text(),
    )


def _no(*_a):
    return None


def test_override_wins_over_everything(monkeypatch):
    monkeypatch.setitem(
        sys.modules,
        "pynvml",
        fake_pynvml([{"name": "NVIDIA H100", "total": 80 * GIB, "free": GIB, "cc": (9, 0)}]),
    )
    facts = driver_facts(
        env={"PROVISION_CUDA_DRIVER": "535.104.05"}, root=FIXTURES / "proc-4090", nvidia_smi=_smi
    )
    assert (facts.driver_version, facts.cuda_version, facts.source) == (
        "535.104.05",
        "12.2",
        "PROVISION_CUDA_DRIVER",
    )


def test_nvml_comes_first_when_no_override(monkeypatch):
    fake = fake_pynvml(
        [{"name": "NVIDIA H100 80GB HBM3", "total": 80 * GIB, "free": 79 * GIB, "cc": (9, 0)}],
        driver="570.124.06",
        cuda=12080,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    facts = driver_facts(env={}, root=FIXTURES / "proc-4090", nvidia_smi=_smi)
    assert (facts.driver_version, facts.cuda_version, facts.source) == (
        "570.124.06",
        "12.8",
        "NVML",
    )
    assert facts.compute_capabilities == [(9, 0)]


def test_sys_module_then_proc_then_nvidia_smi():
    sys_only = driver_facts(env={}, root=FIXTURES / "sys-only", nvml=_no, nvidia_smi=_smi)
    assert sys_only.driver_version == "535.104.05"
    assert sys_only.source.endswith("sys/module/nvidia/version")

    proc = driver_facts(env={}, root=FIXTURES / "proc-4090", nvml=_no, nvidia_smi=_smi)
    assert (proc.driver_version, proc.cuda_version) == ("550.54.14", "12.4")
    assert proc.source.endswith("proc/driver/nvidia/version")
    assert proc.compute_capabilities == [(8, 9), (8, 9)]  # names from /proc, CC from the catalogue

    smi = driver_facts(env={}, root=EMPTY, nvml=_no, nvidia_smi=_smi)
    assert (smi.driver_version, smi.cuda_version, smi.source) == ("550.54.14", "12.4", "nvidia-smi")
    assert smi.compute_capabilities == [(8, 0), (8, 0)]
    assert smi.looked_at[0] == "NVML" and smi.looked_at[-1] == "nvidia-smi"


def test_nothing_found_is_a_normal_answer():
    facts = driver_facts(env={}, root=EMPTY, nvml=_no, nvidia_smi=_no)
    assert facts.driver_version is None and not facts.has_driver
    assert "no NVIDIA driver found" in facts.describe()


def test_this_machine_real_probes():
    # The real probes, unmocked: no driver here means no facts (the CPU build); on a machine
    # with an NVIDIA driver loaded they must find it.
    import shutil

    facts = driver_facts(env={})
    has_driver = (
        Path("/sys/module/nvidia/version").exists()
        or Path("/proc/driver/nvidia/version").exists()
        or shutil.which("nvidia-smi") is not None
    )
    assert (facts.driver_version is not None) == has_driver, facts.to_json()
    if has_driver:
        assert facts.cuda_version, facts.to_json()


def test_planning_target_driver_wins_over_the_environment():
    target = Machine(
        gpus=[Gpu(0, "NVIDIA GeForce RTX 4090", 24 * GIB, compute_capability=(8, 9))],
        driver_version="550.54.14",
        source="target",
        planned=True,
    )
    facts = driver_facts(target, env={"PROVISION_CUDA_DRIVER": "580.65.06"})
    assert (facts.driver_version, facts.source, facts.planned) == ("550.54.14", "--driver", True)
    target.driver_version = None
    facts = driver_facts(target, env={"PROVISION_CUDA_DRIVER": "580.65.06"})
    assert (facts.driver_version, facts.source) == ("580.65.06", "PROVISION_CUDA_DRIVER")
    assert facts.compute_capabilities == [(8, 9)]


@pytest.mark.parametrize("bad", ["latest", "12.4", "550-54"])
def test_bad_override_is_one_message(bad):
    with pytest.raises(ProvisionError, match="is not an NVIDIA driver version"):
        driver_facts(env={"PROVISION_CUDA_DRIVER": bad}, nvml=_no)


def test_probe_functions_are_reused_not_copied():
    import provision.hardware.driver as driver

    assert driver.driver_from_files is probe.driver_from_files
    assert driver.probe_proc is probe.probe_proc
