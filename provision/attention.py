"""flash-attn: a release wheel matched to torch, CUDA, Python and the C++ ABI, or sdpa by name.

    pick_flash_attn("flash-attn==2.7.4.post1", "2.6.0", "cu124", "3.11", cuda="12.4")
    # -> AttentionPick(implementation="flash_attention_2", wheel="flash_attn-2.7.4.post1+cu12
    #    torch2.6cxx11abiFALSE-cp311-cp311-linux_x86_64.whl", url="https://github.com/...", ...)
    pick_flash_attn("flash-attn==2.7.4.post1", "2.6.0", "cpu", "3.11")
    # -> AttentionPick(implementation="sdpa", reason="... no CUDA build ...")

PyPI has flash-attn as a source archive only; building it compiles CUDA kernels for about an
hour (and its setup.py first tries GitHub, which many machines cannot reach). So a lock never
builds it: the wheel comes from the table of known release wheels (provision/data/
flash_attn_wheels.toml), and where none matches, the lock says so and names the fallback (sdpa),
which is also what is recorded for the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from provision.errors import ProvisionError
from provision.hardware.machine import FLASH_ATTN2_MIN_CC
from provision.resources import load_table

FLASH_ATTENTION_2 = "flash_attention_2"


@lru_cache(maxsize=1)
def wheel_table() -> dict[str, Any]:
    """provision/data/flash_attn_wheels.toml, as loaded."""
    return load_table("flash_attn_wheels.toml")


def _key(version: str) -> tuple[int, ...]:
    """'2.7.4.post1' -> (2, 7, 4, 1): post releases sort after their base."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _minor(version: str) -> str:
    parts = version.split("+", 1)[0].split(".")
    return ".".join(parts[:2])


def is_flash_attn(requirement: str) -> bool:
    """Whether `requirement` asks for flash-attn (any spelling of the name)."""
    name = re.split(r"[<>=!~\[;@ (]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower() == wheel_table()["package"]


def requested_versions(requirement: str) -> list[str]:
    """The table's flash-attn releases `requirement` accepts, newest first.

    `flash-attn`, `flash-attn==X` and ranges (`flash-attn>=2.6`, as repositories' requirement
    files write it) are accepted; the lock records the release it picked. A direct URL or an
    environment marker is refused: the wheel is chosen here, for the locked torch.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    hint = (
        'Write "flash-attn==X" (a release listed in provision/data/flash_attn_wheels.toml), a '
        'range such as "flash-attn>=2.6", or just "flash-attn" for the newest release with a '
        "wheel for the locked torch."
    )
    try:
        req = Requirement(requirement)
    except InvalidRequirement as exc:
        raise ProvisionError(f"Cannot read the requirement {requirement!r} ({exc}).", hint) from exc
    if req.url or req.marker:
        raise ProvisionError(
            f"Cannot use the requirement {requirement!r}: flash-attn is installed from the "
            "release wheel the lock picks for its torch, by version only.",
            hint + " A wheel of your own goes in a --wheelhouse folder under its release name.",
        )
    releases = sorted(wheel_table()["release"], key=lambda r: _key(r["version"]), reverse=True)
    fitting = [r["version"] for r in releases if req.specifier.contains(r["version"], True)]
    if not fitting:
        known = ", ".join(r["version"] for r in releases)
        raise ProvisionError(
            f"No flash-attn release whose wheels provision knows satisfies {requirement!r} "
            f"(known: {known}).",
            "Ask for one of those, or add the release's build matrix to "
            "provision/data/flash_attn_wheels.toml with its source.",
        )
    return fitting


def torch_cxx11_abi(torch: str, variant: str | None) -> bool:
    """Whether torch `torch`'s Linux wheel of `variant` (cu124, cpu...) uses the C++11 ABI."""
    for rule in wheel_table()["torch_abi"]:
        below = rule.get("below")
        if below and _key(_minor(torch)) >= _key(below):
            continue
        if "variants" in rule and variant not in rule["variants"]:
            continue
        return bool(rule["cxx11_abi"])
    raise AssertionError("flash_attn_wheels.toml: the last [[torch_abi]] rule must match all")


@dataclass(frozen=True)
class AttentionPick:
    """What a lock records about attention: the kernel, and the wheel when there is one."""

    implementation: str  # "flash_attention_2" or the fallback ("sdpa")
    requested: str  # the requirement as written
    reason: str
    version: str | None = None  # flash-attn's release
    wheel: str | None = None
    url: str | None = None
    requires: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    @property
    def fallback(self) -> bool:
        return self.implementation != FLASH_ATTENTION_2

    def table(self) -> dict[str, Any]:
        """[tool.provision.attention] as the lock writes it."""
        out: dict[str, Any] = {
            "implementation": self.implementation,
            "requested": self.requested,
            "reason": self.reason,
        }
        for key in ("version", "wheel", "url", "source"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out

    def note(self) -> str:
        """One line for the lock's output."""
        if self.fallback:
            return (
                f"{self.requested}: no release wheel fits ({self.reason}); attention falls back "
                f"to {self.implementation}, and nothing is compiled."
            )
        return f"{self.requested}: release wheel {self.wheel} ({self.reason})."


def _fallback(requested: str, reason: str, version: str | None = None) -> AttentionPick:
    return AttentionPick(wheel_table()["fallback"], requested, reason, version=version)


def _excluded(release: dict[str, Any], torch: str, python: str, cuda: str) -> bool:
    values = {"torch": torch, "python": python, "cuda": cuda}
    return any(all(values[k] == v for k, v in rule.items()) for rule in release.get("exclude", []))


def _has_wheel(release: dict[str, Any], torch: str, python: str, cuda: str, abi: bool) -> bool:
    return (
        torch in release["torch"]
        and python in release["python"]
        and cuda in release["cuda"]
        and abi in release["cxx11_abi"]
        and not _excluded(release, torch, python, cuda)
    )


def pick_flash_attn(
    requirement: str,
    torch: str | None,
    variant: str | None,
    python: str,
    platform: str = "x86_64-manylinux_2_28",
    cuda: str | None = None,
    min_cc: tuple[int, int] | None = None,
) -> AttentionPick:
    """The flash-attn wheel for torch `torch` (its `variant`, e.g. cu124; `cuda` = that variant's
    CUDA version, e.g. "12.4") on `python`, or the named fallback with the reason none fits.

    `requirement` is "flash-attn", "flash-attn==X" or a range: the newest release it accepts
    that has a fitting wheel.
    `min_cc` is the lowest compute capability of the GPUs planned for, when known: FlashAttention-2
    needs Ampere (8.0) or newer.
    """
    table = wheel_table()
    wanted = requested_versions(requirement)
    releases = sorted(
        (r for r in table["release"] if r["version"] in wanted),
        key=lambda r: _key(r["version"]),
        reverse=True,
    )
    version = wanted[0] if len(wanted) == 1 else None
    if torch is None:
        return _fallback(requirement, "the lock holds no torch", version)
    if not platform.startswith("x86_64") and platform != "linux":
        return _fallback(
            requirement, f"release wheels are built for linux_x86_64 only, not {platform}", version
        )
    if not cuda or variant in (None, "cpu"):
        return _fallback(
            requirement,
            f"torch {torch} is a {variant or 'CPU'} build: no CUDA, no flash-attn",
            version,
        )
    if min_cc is not None and min_cc < FLASH_ATTN2_MIN_CC:
        return _fallback(
            requirement,
            f"a planned GPU has compute capability {min_cc[0]}.{min_cc[1]}; FlashAttention-2 "
            f"needs {FLASH_ATTN2_MIN_CC[0]}.{FLASH_ATTN2_MIN_CC[1]} or newer",
            version,
        )
    torch_minor, cuda_major = _minor(torch), cuda.split(".")[0]
    abi = torch_cxx11_abi(torch, variant)
    py = python
    tag = f"cp{py.replace('.', '')}"
    for release in releases:
        if not _has_wheel(release, torch_minor, py, cuda_major, abi):
            continue
        name = table["wheel"].format(
            version=release["version"],
            cuda=release["cuda"][cuda_major],
            torch=torch_minor,
            abi=str(abi).upper(),
            python=tag,
        )
        return AttentionPick(
            FLASH_ATTENTION_2,
            requirement,
            f"torch {torch_minor} {variant} (CUDA {cuda_major}), Python {py}, "
            f"C++11 ABI {str(abi).upper()}",
            version=release["version"],
            wheel=name,
            url=table["url"].format(version=release["version"], wheel=name),
            requires=tuple(table["requires"]),
            source=release["source"],
        )
    which = f"flash-attn {version} has no" if version else "no flash-attn release it accepts has a"
    return _fallback(
        requirement,
        f"{which} release wheel for torch {torch_minor} with CUDA {cuda_major}, "
        f"Python {py} and C++11 ABI {str(abi).upper()}",
        version,
    )
