"""Which image a profile's Dockerfile starts FROM: the lock's torch variant -> a pinned base image.

The table is data (provision/data/docker_base_images.toml, with its sources). `--base-image`
replaces the choice for private registries and air-gapped sites; whichever it is, the reference
must pin a tag (never `latest`, never none) and may add a digest, and a CUDA base needs a lock that
was made for a CUDA variant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from provision.errors import ProvisionError
from provision.resources import load_table

# name[:tag][@sha256:<64 hex>], where name may start with a registry host[:port]/.
_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
# nvidia/cuda tags start with the toolkit version: 12.4.1-base-ubuntu22.04.
_CUDA_TAG = re.compile(
    r"^(?P<cuda>[0-9]+\.[0-9]+(?:\.[0-9]+)?)-[a-z]+(?:-[a-z0-9]+)*?-(?P<os>[a-z]+[0-9.]+)$"
)
_MANYLINUX = re.compile(r"manylinux_?(?P<major>[0-9]+)_(?P<minor>[0-9]+)")
_OLD_MANYLINUX = {"manylinux2014": "2.17", "manylinux2010": "2.12", "manylinux1": "2.5"}
TABLE_FILE = "docker_base_images.toml"


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. `pinned` means a tag other than `latest`, or a digest."""

    name: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    @property
    def repository(self) -> str:
        """The name without a registry host: docker.io/nvidia/cuda -> nvidia/cuda."""
        first, _, rest = self.name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return rest
        return self.name


def parse_image_ref(text: str, what: str = "--base-image") -> ImageRef:
    """`text` as an image reference that pins its version; one clear message otherwise."""
    match = _REF.match(text.strip())
    if not match:
        raise ProvisionError(
            f"{what} {text!r} is not an image reference.",
            "Write it as NAME:TAG or NAME:TAG@sha256:DIGEST, e.g. "
            "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04.",
        )
    ref = ImageRef(match["name"], match["tag"], match["digest"])
    if ref.tag is None and ref.digest is None:
        raise ProvisionError(
            f"{what} {text!r} names no tag, so it would mean `latest` and change under you.",
            f"Pin a version: {ref.name}:<tag> (optionally @sha256:<digest>).",
        )
    if ref.tag == "latest":
        raise ProvisionError(
            f"{what} {text!r} uses the `latest` tag, which changes under you.",
            f"Pin a version: {ref.name}:<tag> (optionally @sha256:<digest>).",
        )
    return ref


@dataclass(frozen=True)
class BaseImage:
    ref: ImageRef
    cuda: str  # toolkit version in the image ("" for none, None when not known)
    os: str | None
    glibc: str | None
    chosen_by: str  # "table (cu124)" or "--base-image"
    source: str
    warnings: tuple[str, ...] = ()

    @property
    def is_cuda(self) -> bool:
        return bool(self.cuda)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.ref),
            "cuda": self.cuda,
            "os": self.os,
            "glibc": self.glibc,
            "chosen_by": self.chosen_by,
            "source": self.source,
            "warnings": list(self.warnings),
        }


@lru_cache(maxsize=1)
def base_table() -> dict[str, Any]:
    return load_table(TABLE_FILE)


def _row_for_image(ref: ImageRef) -> dict[str, Any] | None:
    for row in base_table()["variants"].values():
        known = parse_image_ref(row["image"], "table image")
        if known.repository == ref.repository and known.tag == ref.tag:
            return row
    return None


def _describe_override(ref: ImageRef) -> tuple[str | None, str | None]:
    """(CUDA version, OS) of an image named on the command line: the table, else nvidia's tag."""
    row = _row_for_image(ref)
    if row is not None:
        return row["cuda"], row["os"]
    if ref.repository.endswith("nvidia/cuda") and ref.tag:
        match = _CUDA_TAG.match(ref.tag)
        if match:
            return match["cuda"], match["os"]
        raise ProvisionError(
            f"--base-image {ref}: the nvidia/cuda tag {ref.tag!r} names no CUDA version and OS.",
            "Use a tag like 12.4.1-base-ubuntu22.04 (see provision/data/docker_base_images.toml).",
        )
    return None, None  # a private image: nothing known about what is inside


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", version))


def needed_glibc(platform: str) -> str | None:
    """x86_64-manylinux_2_28 -> "2.28" (the C library the lock's wheels were chosen for)."""
    match = _MANYLINUX.search(platform)
    if match:
        return f"{match['major']}.{match['minor']}"
    for name, version in _OLD_MANYLINUX.items():
        if name in platform:
            return version
    return None


def choose_base_image(target: dict[str, Any], override: str | None = None) -> BaseImage:
    """The base image for a lock's `[tool.provision.target]`, or the checked `override`."""
    variant = target.get("variant")
    lock_cuda = str(target.get("cuda") or "")
    if variant and variant != "cpu" and not lock_cuda:
        match = re.fullmatch(r"cu([0-9]+)([0-9])", str(variant))
        lock_cuda = f"{int(match.group(1))}.{match.group(2)}" if match else ""
    os_table = base_table()["os"]
    warnings: list[str] = []
    if override:
        ref = parse_image_ref(override)
        cuda, os_name = _describe_override(ref)
        if cuda and not lock_cuda:
            raise ProvisionError(
                f"--base-image {ref} is a CUDA {cuda} image, but the lock has no CUDA variant "
                f"(variant: {variant or 'none recorded'}), so its torch would not use the GPU.",
                "Lock for a CUDA build first (`provision lock PROFILE --variant cu124`, or on "
                "the GPU machine), or pass a CPU base image.",
            )
        if cuda and lock_cuda and _key(cuda)[:2] < _key(lock_cuda)[:2]:
            warnings.append(
                f"--base-image {ref} has CUDA {cuda}, older than the lock's {variant} "
                f"(CUDA {lock_cuda}): the container toolkit will admit drivers too old for it."
            )
        row = {"source": "--base-image", "glibc": os_table.get(os_name or "", {}).get("glibc")}
        chosen_by = "--base-image"
    else:
        if not variant:
            raise ProvisionError(
                "The lock records no torch variant ([tool.provision.target] variant), so there is "
                "no telling which CUDA base image it needs.",
                "Lock again with this provision (`provision lock PROFILE`), or pass "
                "--base-image NAME:TAG.",
            )
        rows = base_table()["variants"]
        if variant not in rows:
            raise ProvisionError(
                f"No base image is known for the lock's variant {variant!r}.",
                f"Pass --base-image NAME:TAG (an image with CUDA {lock_cuda or '?'}), or add a row "
                f"to provision/data/{TABLE_FILE}. Known variants: {', '.join(rows)}.",
            )
        row = dict(rows[variant])
        ref = parse_image_ref(row["image"], "table image")
        cuda, os_name = row["cuda"], row["os"]
        row["glibc"] = os_table[os_name]["glibc"]
        chosen_by = f"table ({variant})"
    glibc = row.get("glibc")
    need = needed_glibc(str(target.get("platform", "")))
    if glibc and need and _key(glibc) < _key(need):
        raise ProvisionError(
            f"Base image {ref} ({os_name}) has glibc {glibc}, but the lock's wheels were chosen "
            f"for {target.get('platform')} (glibc {need} or newer).",
            "Pick a newer base image with --base-image, or lock for an older manylinux platform.",
        )
    return BaseImage(ref, cuda or "", os_name, glibc, chosen_by, row["source"], tuple(warnings))
