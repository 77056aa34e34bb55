"""What a machine's GPUs are: the plain result objects every probe and planning target returns."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from provision.errors import ProvisionError
from provision.resources import load_table

# Compute capability from which bf16 math and FlashAttention-2 are supported (Ampere, sm_80).
BF16_MIN_CC = (8, 0)
FLASH_ATTN2_MIN_CC = (8, 0)
_DRIVER_RE = re.compile(r"^[0-9]{3}(\.[0-9]+){0,2}$")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes, as NVML reports memory.total
    memory_free: int | None = None  # bytes; None for a planning target
    compute_capability: tuple[int, int] | None = None

    @property
    def bf16(self) -> bool | None:
        cc = self.compute_capability
        return None if cc is None else cc >= BF16_MIN_CC

    @property
    def flash_attn2(self) -> bool | None:
        cc = self.compute_capability
        return None if cc is None else cc >= FLASH_ATTN2_MIN_CC

    @property
    def cc_text(self) -> str | None:
        cc = self.compute_capability
        return None if cc is None else f"{cc[0]}.{cc[1]}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["compute_capability"] = self.cc_text
        data["bf16"] = self.bf16
        data["flash_attn2"] = self.flash_attn2
        return data


@dataclass
class Machine:
    """GPUs plus the driver facts. `source` says where they came from (nvml, nvidia-smi, /proc,
    target, none); `planned` is True for a machine described on the command line."""

    gpus: list[Gpu]
    driver_version: str | None = None
    cuda_version: str | None = None  # the highest CUDA the driver supports, e.g. "12.4"
    source: str = "none"
    planned: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def min_compute_capability(self) -> tuple[int, int] | None:
        ccs = [g.compute_capability for g in self.gpus if g.compute_capability]
        return min(ccs) if ccs else None

    def describe(self) -> str:
        if not self.gpus:
            return "no NVIDIA GPU"
        names: dict[str, int] = {}
        for gpu in self.gpus:
            label = f"{gpu.name} ({gpu.memory_total / 1024**3:.1f} GiB)"
            names[label] = names.get(label, 0) + 1
        return ", ".join(f"{n} x {label}" for label, n in names.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_json() for g in self.gpus],
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "source": self.source,
            "planned": self.planned,
            "notes": list(self.notes),
        }


def parse_cc(text: str | None) -> tuple[int, int] | None:
    if not text or text.strip() in ("?", "[N/A]", "N/A"):
        return None
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)


@lru_cache(maxsize=1)
def driver_tables() -> dict[str, dict[str, str]]:
    return load_table("cuda_drivers.toml")


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def cuda_for_driver(driver_version: str | None) -> str | None:
    """The highest CUDA version a driver supports, from its branch (550.54.14 -> 12.4)."""
    if not driver_version:
        return None
    try:
        branch = int(driver_version.split(".")[0])
    except ValueError:
        return None
    best = None
    for key, cuda in driver_tables()["branch_cuda"].items():
        if int(key) <= branch and (best is None or int(key) > best[0]):
            best = (int(key), cuda)
    return best[1] if best else None


def min_driver_for_cuda(cuda: str) -> str | None:
    """The oldest driver whose own CUDA support reaches `cuda` (e.g. 12.4 -> 550.54.14)."""
    table = driver_tables()["toolkit_min_driver"]
    if cuda in table:
        return table[cuda]
    newer = [k for k in table if _version_key(k) >= _version_key(cuda)]
    return table[min(newer, key=_version_key)] if newer else None


def driver_at_least(driver: str, minimum: str) -> bool:
    return _version_key(driver) >= _version_key(minimum)


def check_driver_version(text: str, where: str) -> str:
    """A driver version as NVIDIA writes it (550.54.14); anything else is one clear message.

    Here, not in driver.py, so that the catalogue (planning targets) and the driver facts both
    use it without importing each other."""
    value = text.strip()
    if not _DRIVER_RE.match(value):
        raise ProvisionError(
            f"{where} = {text!r} is not an NVIDIA driver version.",
            "Write it as nvidia-smi prints it, e.g. 550.54.14 (or 535).",
        )
    return value
