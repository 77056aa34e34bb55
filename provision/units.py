"""Byte sizes as people type them ("24GiB", "80GB", "24576MiB") and as the reports print them."""

from __future__ import annotations

import re

from provision.errors import ProvisionError

KIB = 1024
MIB = 1024**2
GIB = 1024**3

_UNITS = {
    "": GIB,  # a bare number is GiB: "--gpu-mem 24" means a 24 GiB card
    "b": 1,
    "k": KIB,
    "kib": KIB,
    "kb": 1000,
    "m": MIB,
    "mib": MIB,
    "mb": 1000**2,
    "g": GIB,
    "gib": GIB,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "size") -> int:
    """Parse "24GiB" / "24 GB" / "24576MiB" / "24" (GiB) into bytes; a clear error otherwise."""
    match = _SIZE.match(text or "")
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ProvisionError(
            f"{what} {text!r} is not a size.",
            "Write a number with a unit, e.g. 24GiB, 80GB or 24576MiB (a bare number means GiB).",
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ProvisionError(f"{what} {text!r} must be larger than zero.")
    return int(value)


def gib(n_bytes: float) -> float:
    return n_bytes / GIB


def fmt_gib(n_bytes: float, digits: int = 1) -> str:
    return f"{n_bytes / GIB:.{digits}f} GiB"


def fmt_bytes(n_bytes: float) -> str:
    """Human size with a binary unit: 512 B, 3.2 MiB, 15.4 GiB."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
