"""The GPU catalogue (provision/data/gpus.toml) and planning targets: a machine you do not have.

`--gpu "RTX 4090"`, `--gpu "A100-80GB x2"`, `--gpu-mem 24GiB --gpus 2` all become a Machine.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

from provision.errors import ProvisionError
from provision.hardware.machine import Gpu, Machine, cuda_for_driver, parse_cc
from provision.resources import load_table
from provision.units import MIB, parse_size


@dataclass(frozen=True)
class CatalogueGpu:
    name: str
    memory_mib: int
    compute_capability: tuple[int, int] | None
    aliases: tuple[str, ...]
    source: str
    note: str = ""

    @property
    def memory_total(self) -> int:
        return self.memory_mib * MIB


def _key(text: str) -> str:
    """Compare names loosely: case, spaces, dashes and the vendor words do not matter."""
    text = text.lower()
    for word in ("nvidia", "geforce", "tesla"):
        text = text.replace(word, "")
    return re.sub(r"[\s_\-]+", "", text)


@lru_cache(maxsize=1)
def catalogue() -> tuple[CatalogueGpu, ...]:
    rows = load_table("gpus.toml")["gpu"]
    return tuple(
        CatalogueGpu(
            name=row["name"],
            memory_mib=row["memory_mib"],
            compute_capability=parse_cc(row.get("compute_capability")),
            aliases=tuple(row.get("aliases", ())),
            source=row.get("source", ""),
            note=row.get("note", ""),
        )
        for row in rows
    )


@lru_cache(maxsize=1)
def _index() -> dict[str, CatalogueGpu]:
    index: dict[str, CatalogueGpu] = {}
    for gpu in catalogue():
        index.setdefault(_key(gpu.name), gpu)
    for gpu in catalogue():  # aliases never shadow a real NVML name
        for alias in gpu.aliases:
            index.setdefault(_key(alias), gpu)
    return index


def lookup_exact(name: str) -> CatalogueGpu | None:
    return _index().get(_key(name))


def lookup(name: str) -> CatalogueGpu:
    """A catalogue GPU by NVML name or alias; an unknown name lists the close ones."""
    found = lookup_exact(name)
    if found:
        return found
    labels = {}
    for gpu in catalogue():
        labels[gpu.name] = gpu.name
        for alias in gpu.aliases:
            labels[alias] = gpu.name
    close = difflib.get_close_matches(name, list(labels), n=5, cutoff=0.5)
    if not close:  # compare on the loose key too: "a100" vs "A100-80GB"
        keyed = {_key(k): k for k in labels}
        close = [keyed[k] for k in difflib.get_close_matches(_key(name), list(keyed), n=5)]
    hint = f"Close names: {', '.join(dict.fromkeys(close))}. " if close else ""
    raise ProvisionError(
        f"Unknown GPU '{name}'.",
        hint
        + "`provision gpus` lists the catalogue; or describe it with --gpu-mem 24GiB --gpus N.",
    )


# A count is one or two digits after/before an x: "A100-80GB x2", "2x RTX 4090" (never "RTX 4090").
_COUNT = re.compile(r"^(?P<name>.+?)\s*[x*×]\s*(?P<count>[0-9]{1,2})\s*$", re.IGNORECASE)
_COUNT_PREFIX = re.compile(r"^(?P<count>[0-9]{1,2})\s*[x*×]\s+(?P<name>.+)$", re.IGNORECASE)


def parse_gpu_spec(spec: str) -> tuple[str, int]:
    """'A100-80GB x2' / '2x RTX 4090' / 'L4' -> (name, count)."""
    spec = spec.strip()
    for pattern in (_COUNT, _COUNT_PREFIX):
        match = pattern.match(spec)
        if match and match.group("name").strip():
            return match.group("name").strip(), int(match.group("count"))
    return spec, 1


def target_machine(
    gpu: str | None = None,
    gpu_mem: str | None = None,
    gpus: int | None = None,
    driver: str | None = None,
    compute_capability: str | None = None,
) -> Machine | None:
    """The planning target the flags describe, or None when no flag describes one."""
    if gpu is None and gpu_mem is None and gpus is None and driver is None:
        return None
    if gpus is not None and gpus < 1:
        raise ProvisionError(f"--gpus {gpus} must be at least 1.")
    from provision.bounds import check_bound

    check_bound("gpus", gpus)
    if driver is not None:
        from provision.hardware.driver import check_driver_version

        driver = check_driver_version(driver, "--driver")
    notes: list[str] = []
    if gpu is not None:
        name, count = parse_gpu_spec(gpu)
        if gpus is not None:
            count = gpus
        if count < 1:
            raise ProvisionError(f"--gpu {gpu!r}: the count must be at least 1.")
        check_bound("gpus", count)
        entry = lookup(name)
        memory = parse_size(gpu_mem, "--gpu-mem") if gpu_mem else entry.memory_total
        if gpu_mem:  # e.g. a 48 GB modded 4090 that NVML names like the 24 GB card
            notes.append(
                f"--gpu-mem {gpu_mem} replaces the catalogue's {entry.memory_mib} MiB "
                f"for {entry.name}."
            )
        cc = parse_cc(compute_capability) if compute_capability else entry.compute_capability
        label = entry.name
    elif gpu_mem is not None:
        count = gpus or 1
        memory = parse_size(gpu_mem, "--gpu-mem")
        cc = parse_cc(compute_capability) if compute_capability else None
        label = f"GPU with {gpu_mem}"
    else:
        # Only --driver or --gpus: a machine whose GPUs we cannot size.
        raise ProvisionError(
            "A planning target needs a GPU: --gpu NAME or --gpu-mem SIZE.",
            'e.g. --gpu "RTX 4090", --gpu "A100-80GB x2" or --gpu-mem 24GiB --gpus 2.',
        )
    machine_gpus = [
        Gpu(index=i, name=label, memory_total=memory, compute_capability=cc) for i in range(count)
    ]
    return Machine(
        gpus=machine_gpus,
        driver_version=driver,
        cuda_version=cuda_for_driver(driver),
        source="target",
        planned=True,
        notes=notes,
    )
