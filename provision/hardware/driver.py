"""Driver facts for choosing a torch build: the driver version, the CUDA it supports, the GPUs'
compute capabilities, and where each fact came from.

The order is the one torch selection needs, most deliberate first: an override
(`PROVISION_CUDA_DRIVER`, or the planning target's `--driver`), NVML, /sys/module/nvidia/version,
/proc/driver/nvidia/version, nvidia-smi. Finding nothing is a normal answer: the CPU build.
The probing itself lives in probe.py; this module only orders it and says what it found.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.hardware.machine import Gpu, Machine, check_driver_version, cuda_for_driver
from provision.hardware.probe import driver_from_files, probe_nvidia_smi, probe_nvml, probe_proc

DRIVER_ENV = "PROVISION_CUDA_DRIVER"


@dataclass
class DriverFacts:
    """What torch selection needs to know about a machine's driver and GPUs."""

    driver_version: str | None
    cuda_version: str | None  # the highest CUDA the driver supports, e.g. "12.4"
    compute_capabilities: list[tuple[int, int]]  # one per GPU whose capability is known
    gpu_names: list[str]
    source: str  # where the driver version came from
    looked_at: list[str] = field(default_factory=list)  # every place tried, in order
    planned: bool = False

    @property
    def has_driver(self) -> bool:
        return self.driver_version is not None

    @property
    def min_cc(self) -> tuple[int, int] | None:
        return min(self.compute_capabilities) if self.compute_capabilities else None

    @property
    def max_cc(self) -> tuple[int, int] | None:
        return max(self.compute_capabilities) if self.compute_capabilities else None

    def describe(self) -> str:
        if not self.driver_version:
            if not self.looked_at:
                return self.source  # facts given, not probed (e.g. `lock --all`)
            return "no NVIDIA driver found (looked at: " + ", ".join(self.looked_at) + ")"
        cuda = f", supports CUDA {self.cuda_version}" if self.cuda_version else ""
        return f"driver {self.driver_version}{cuda} (from {self.source})"

    def to_json(self) -> dict[str, Any]:
        return {
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "compute_capabilities": [f"{a}.{b}" for a, b in self.compute_capabilities],
            "gpus": list(self.gpu_names),
            "source": self.source,
            "looked_at": list(self.looked_at),
            "planned": self.planned,
        }


def _with_driver(
    gpus: list[Gpu], version: str, source: str, looked: list[str], planned: bool = False
) -> DriverFacts:
    """Facts for `gpus` under a driver given as a version (an override, or read from a file)."""
    machine = Machine(gpus=gpus, driver_version=version, planned=planned)
    return _from_machine(machine, source, looked)


def _from_machine(machine: Machine, source: str, looked: list[str]) -> DriverFacts:
    ccs = [g.compute_capability for g in machine.gpus if g.compute_capability]
    cuda = machine.cuda_version or cuda_for_driver(machine.driver_version)
    return DriverFacts(
        driver_version=machine.driver_version,
        cuda_version=cuda,
        compute_capabilities=ccs,
        gpu_names=[g.name for g in machine.gpus],
        source=source,
        looked_at=looked,
        planned=machine.planned,
    )


def driver_facts(
    machine: Machine | None = None,
    env: Mapping[str, str] | None = None,
    root: str | os.PathLike[str] = "/",
    nvml: Callable[[], Machine | None] = probe_nvml,
    nvidia_smi: Callable[[], Machine | None] = probe_nvidia_smi,
) -> DriverFacts:
    """The driver and GPUs torch selection plans for.

    `machine` is a planning target (from --gpu/--gpu-mem/--driver) or None for this machine.
    A target's own --driver wins, then PROVISION_CUDA_DRIVER, then what this machine shows.
    `root` lets tests point the file probes at a fake /sys and /proc.
    """
    environ = os.environ if env is None else env
    looked: list[str] = []
    override = environ.get(DRIVER_ENV, "").strip()

    if machine is not None and machine.planned:
        looked.append("planning target")
        if machine.driver_version:
            check_driver_version(machine.driver_version, "--driver")
            return _from_machine(machine, "--driver", looked)
        if override:
            looked.append(DRIVER_ENV)
            version = check_driver_version(override, DRIVER_ENV)
            return _with_driver(machine.gpus, version, DRIVER_ENV, looked, planned=True)
        # A described GPU without a driver: the caller assumes a driver that fits (and says so).
        facts = _from_machine(machine, "not given", looked)
        return facts

    if override:
        looked.append(DRIVER_ENV)
        version = check_driver_version(override, DRIVER_ENV)
        # The GPUs are still this machine's, when it has any.
        gpus = (nvml() or probe_proc(root) or Machine(gpus=[])).gpus
        return _with_driver(gpus, version, DRIVER_ENV, looked)

    looked.append("NVML")
    found = nvml()
    if found is not None and found.driver_version:
        return _from_machine(found, "NVML", looked)

    base = Path(root)
    sys_file = base / "sys/module/nvidia/version"
    proc_file = base / "proc/driver/nvidia/version"
    looked += [str(sys_file), str(proc_file)]
    version = driver_from_files(root)
    if version:
        source = str(sys_file) if _readable_text(sys_file) else str(proc_file)
        proc_machine = probe_proc(root)
        gpus = proc_machine.gpus if proc_machine else []
        return _with_driver(gpus, version, source, looked)

    looked.append("nvidia-smi")
    found = nvidia_smi()
    if found is not None and found.driver_version:
        return _from_machine(found, "nvidia-smi", looked)

    return DriverFacts(None, None, [], [], "none", looked)


def _readable_text(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False
