"""GPU probing: NVML at the pynvml boundary (no GPU here); nvidia-smi and /proc from fixtures."""

from __future__ import annotations

import stat
import sys
import types
from pathlib import Path

import pytest

from provision.hardware import probe
from provision.hardware.machine import cuda_for_driver, min_driver_for_cuda

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia"
GIB = 1024**3


class _Memory:
    def __init__(self, total: int, free: int) -> None:
        self.total, self.free, self.used = total, free, total - free


def fake_pynvml(devices: list[dict], driver: str = "550.54.14", cuda: int = 12040, fail_init=None):
    """A stand-in for the pynvml module with the calls probe_nvml makes: the one boundary we mock,
    since no GPU is lent here. The values follow NVML's documented types (bytes for memory, the
    CUDA driver version as major*1000 + minor*10); they were not read off a real card."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    mod.NVMLError = NVMLError
    calls = []

    def init():
        calls.append("init")
        if fail_init:
            raise NVMLError(fail_init)

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: calls.append("shutdown")
    mod.nvmlSystemGetDriverVersion = lambda: driver
    mod.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    mod.nvmlDeviceGetName = lambda h: h["name"].encode()  # older bindings return bytes
    mod.nvmlDeviceGetMemoryInfo = lambda h: _Memory(h["total"], h["free"])
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: h["cc"]
    mod.calls = calls
    return mod


def test_nvml_reads_gpus_driver_and_cuda(monkeypatch):
    devices = [
        {"name": "NVIDIA H100 80GB HBM3", "total": 85520809984, "free": 84911063040, "cc": (9, 0)},
        {"name": "NVIDIA H100 80GB HBM3", "total": 85520809984, "free": 1 * GIB, "cc": (9, 0)},
    ]
    fake = fake_pynvml(devices, driver="570.124.06", cuda=12080)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    machine = probe.probe_nvml()
    assert machine is not None and machine.source == "nvml"
    assert machine.driver_version == "570.124.06" and machine.cuda_version == "12.8"
    assert [g.name for g in machine.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert machine.gpus[1].memory_free == GIB
    assert machine.gpus[0].bf16 and machine.gpus[0].flash_attn2
    assert fake.calls == ["init", "shutdown"]


def test_nvml_unavailable_falls_through(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "pynvml", fake_pynvml([], fail_init="NVML Shared Library Not Found")
    )
    assert probe.probe_nvml() is None


def test_real_probe_on_this_machine():
    """The real chain (real pynvml first). Without a driver, no GPU is the answer, not an error."""
    machine = probe.probe_machine()
    if Path("/proc/driver/nvidia/version").exists():
        assert machine.gpus and machine.driver_version
    else:
        assert machine.gpus == [] and machine.source == "none"


def test_turing_has_no_bf16(monkeypatch):
    devices = [{"name": "Tesla T4", "total": 15 * GIB, "free": 15 * GIB, "cc": (7, 5)}]
    monkeypatch.setitem(
        sys.modules, "pynvml", fake_pynvml(devices, driver="535.104.05", cuda=12020)
    )
    gpu = probe.probe_nvml().gpus[0]
    assert gpu.bf16 is False and gpu.flash_attn2 is False


def _fake_smi(tmp_path: Path, query: str, header: str, fail_compute_cap: bool = False) -> str:
    """An nvidia-smi executable that prints fixture files, so the real subprocess path runs."""
    script = tmp_path / "nvidia-smi"
    check = 'case "$*" in *compute_cap*) exit 6;; esac\n' if fail_compute_cap else ""
    script.write_text(
        "#!/bin/sh\n"
        + check
        + f'case "$*" in *--query-gpu*) cat "{FIXTURES / query}";;\n'
        + f'  *) cat "{FIXTURES / header}";;\nesac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_nvidia_smi_fallback(tmp_path):
    exe = _fake_smi(tmp_path, "nvidia-smi-query-2xA100.csv", "nvidia-smi-header-550.txt")
    machine = probe.probe_nvidia_smi(exe)
    assert machine.source == "nvidia-smi"
    assert machine.driver_version == "550.54.14" and machine.cuda_version == "12.4"
    assert machine.gpu_count == 2
    assert machine.gpus[0].memory_total == 81920 * 1024**2
    assert machine.gpus[1].memory_free == 1024 * 1024**2
    assert machine.gpus[0].compute_capability == (8, 0)


def test_old_nvidia_smi_without_compute_cap(tmp_path):
    exe = _fake_smi(
        tmp_path,
        "nvidia-smi-query-v100-old.csv",
        "nvidia-smi-query-v100-old.csv",
        fail_compute_cap=True,
    )
    machine = probe.probe_nvidia_smi(exe)
    assert machine.gpus[0].name == "Tesla V100-SXM2-32GB"
    assert machine.gpus[0].compute_capability is None
    # No "CUDA Version" header: taken from the driver branch table.
    assert machine.cuda_version == "11.4"


def test_proc_fallback_names_gpus_and_sizes_them_from_the_catalogue():
    machine = probe.probe_proc(FIXTURES / "proc-4090")
    assert machine.source == "/proc"
    assert machine.driver_version == "550.54.14" and machine.cuda_version == "12.4"
    assert [g.name for g in machine.gpus] == ["NVIDIA GeForce RTX 4090"] * 2
    assert machine.gpus[0].memory_total == 24564 * 1024**2
    assert machine.gpus[0].compute_capability == (8, 9)


def test_proc_open_kernel_module_version_line():
    machine = probe.probe_proc(FIXTURES / "proc-open")
    assert machine.driver_version == "580.65.06" and machine.cuda_version == "13.0"
    assert machine.gpus[0].name == "NVIDIA H20"


def test_sys_module_version_wins_over_proc():
    assert probe.driver_from_files(FIXTURES / "sys-only") == "535.104.05"
    assert probe.probe_proc(FIXTURES / "sys-only").gpus == []


def test_no_driver_files_means_no_answer(tmp_path):
    assert probe.probe_proc(tmp_path) is None


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("450.80.02", "11.0"),
        ("550.54.14", "12.4"),
        ("565.57.01", "12.6"),
        ("580.65.06", "13.0"),
        ("390.1", None),
    ],
)
def test_driver_branch_to_cuda(driver, cuda):
    assert cuda_for_driver(driver) == cuda


def test_min_driver_for_cuda():
    assert min_driver_for_cuda("12.4") == "550.54.14"
    assert min_driver_for_cuda("12.7") == "570.26"  # no 12.7 toolkit: the next one's driver
