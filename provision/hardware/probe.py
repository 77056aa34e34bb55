"""Probe this machine's NVIDIA GPUs: NVML, then nvidia-smi, then the driver's /proc and /sys files.

No GPU is a normal answer (a Machine with no GPUs), never an error. Each probe returns None when its
way of looking is not available, so the next one gets a turn.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from provision.hardware.machine import Gpu, Machine, cuda_for_driver, parse_cc

MIB = 1024**2


def probe_nvml() -> Machine | None:
    """Read GPUs and driver facts through NVML (nvidia-ml-py); None when NVML cannot start."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no library, no driver loaded, or no permission: let the fallbacks look
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = None
        try:
            cuda_int = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            cuda = f"{cuda_int // 1000}.{(cuda_int % 1000) // 10}"
        except pynvml.NVMLError:
            cuda = cuda_for_driver(driver)
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                cc: tuple[int, int] | None = tuple(  # type: ignore[assignment]
                    pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                )
            except pynvml.NVMLError:
                cc = None
            gpus.append(
                Gpu(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total=int(memory.total),
                    memory_free=int(memory.free),
                    compute_capability=cc,
                )
            )
        return Machine(gpus=gpus, driver_version=driver, cuda_version=cuda, source="nvml")
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


NVIDIA_SMI_QUERY = "index,name,memory.total,memory.free,driver_version,compute_cap"


def parse_nvidia_smi_csv(csv_text: str, header_text: str = "") -> Machine:
    """Parse `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits` output.

    `header_text` is plain `nvidia-smi` output, read for its "CUDA Version: X.Y" when present.
    """
    gpus = []
    driver = None
    for line in csv_text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5:
            continue
        index, name, total, free, driver = fields[:5]
        cc = parse_cc(fields[5]) if len(fields) > 5 else None
        gpus.append(
            Gpu(
                index=int(index),
                name=name,
                memory_total=int(float(total)) * MIB,
                memory_free=int(float(free)) * MIB if free not in ("[N/A]", "") else None,
                compute_capability=cc,
            )
        )
    match = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", header_text)
    cuda = match.group(1) if match else cuda_for_driver(driver)
    return Machine(gpus=gpus, driver_version=driver, cuda_version=cuda, source="nvidia-smi")


def probe_nvidia_smi(executable: str | None = None, timeout: float = 10.0) -> Machine | None:
    exe = executable or shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        query = subprocess.run(
            [exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if query.returncode != 0:
            # Older nvidia-smi has no compute_cap field; ask again without it.
            query = subprocess.run(
                [
                    exe,
                    "--query-gpu=" + NVIDIA_SMI_QUERY.rsplit(",", 1)[0],
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        if query.returncode != 0:
            return None
        header = subprocess.run([exe], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi_csv(query.stdout, header)


_PROC_VERSION = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9]+\.[0-9]+(?:\.[0-9]+)?)")


def driver_from_files(root: str | os.PathLike[str] = "/") -> str | None:
    """Driver version from /sys/module/nvidia/version, else /proc/driver/nvidia/version."""
    base = Path(root)
    sys_version = base / "sys/module/nvidia/version"
    try:
        text = sys_version.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    try:
        proc = (base / "proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = _PROC_VERSION.search(proc)
    return match.group(1) if match else None


def probe_proc(root: str | os.PathLike[str] = "/") -> Machine | None:
    """GPU names from /proc/driver/nvidia/gpus/*/information and the driver version from files.

    The driver's files hold no memory size; the GPU catalogue supplies it when the name is known.
    """
    driver = driver_from_files(root)
    if driver is None:
        return None
    from provision.hardware.catalogue import lookup_exact

    gpus = []
    notes = []
    gpu_dir = Path(root) / "proc/driver/nvidia/gpus"
    entries = sorted(gpu_dir.iterdir()) if gpu_dir.is_dir() else []
    for index, entry in enumerate(entries):
        try:
            info = (entry / "information").read_text()
        except OSError:
            continue
        match = re.search(r"^Model:\s*(.+)$", info, re.MULTILINE)
        name = match.group(1).strip() if match else "unknown NVIDIA GPU"
        known = lookup_exact(name)
        if known is None:
            notes.append(f"GPU {index} ({name}) is not in the catalogue: its memory is unknown.")
        gpus.append(
            Gpu(
                index=index,
                name=name,
                memory_total=known.memory_total if known else 0,
                compute_capability=known.compute_capability if known else None,
            )
        )
    return Machine(
        gpus=gpus,
        driver_version=driver,
        cuda_version=cuda_for_driver(driver),
        source="/proc",
        notes=notes,
    )


def probe_machine() -> Machine:
    """This machine: NVML, else nvidia-smi, else the driver's files, else no GPU."""
    for probe in (probe_nvml, probe_nvidia_smi, probe_proc):
        machine = probe()
        if machine is not None:
            return machine
    return Machine(gpus=[], source="none", notes=["No NVIDIA driver or GPU found."])
