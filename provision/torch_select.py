"""Which torch build a machine gets: driver + torch version -> CUDA variant, index, paired packages.

The facts (releases, their variants, what each variant needs) live in
provision/data/torch_matrix.toml; this module applies the rules, in order:

1. drop variants that cannot run the GPUs' compute capability;
2. prefer the highest variant not newer than the CUDA version the driver supports;
3. else the lowest variant of the driver's CUDA major (minor-version compatibility, with a warning);
4. a driver newer than every variant takes the highest;
5. nothing left: stop, naming the driver, the torch version, its variants and what would work.

torch, torchvision and torchaudio always come from the chosen variant, from one index: the PyTorch
index (or a mirror), or PyPI when PyPI's wheel is built with that very variant (the PyPI route).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.hardware.driver import DriverFacts
from provision.resources import data_file, load_table

PYPI_URL = "https://pypi.org/simple"
CPU = "cpu"
PYPI = "pypi"


def _vkey(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", text))


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def cc_text(cc: tuple[int, int] | None) -> str | None:
    return None if cc is None else f"{cc[0]}.{cc[1]}"


# --- the matrix, as loaded from data ---------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    cuda: str  # "" for cpu
    min_driver: str | None = None  # oldest driver that runs it (minor-version compatibility)
    full_driver: str | None = None  # driver of the toolkit's own release (no JIT caveats)
    min_cc: tuple[int, int] | None = None
    max_cc: tuple[int, int] | None = None
    source: str = ""

    @property
    def is_cpu(self) -> bool:
        return self.name == CPU

    @property
    def cuda_key(self) -> tuple[int, ...]:
        return _vkey(self.cuda)

    @property
    def cuda_major(self) -> int:
        return self.cuda_key[0]

    def runs(self, cc: tuple[int, int]) -> bool:
        """True when its kernels cover `cc` (a newer minor of the newest major runs them too)."""
        if self.min_cc is None or self.max_cc is None:
            return True
        return cc >= self.min_cc and cc[0] <= self.max_cc[0]

    def cc_range(self) -> str:
        return f"{cc_text(self.min_cc)}-{self.max_cc[0] if self.max_cc else '?'}.x"


@dataclass(frozen=True)
class Release:
    torch: str
    torchvision: str | None
    torchaudio: str | None
    variants: tuple[str, ...]
    pypi_variant: str | None
    python: tuple[str, str] | None
    sources: tuple[str, ...]
    note: str = ""

    def paired(self, package: str) -> str | None:
        return {"torch": self.torch, "torchvision": self.torchvision}.get(
            package, self.torchaudio if package == "torchaudio" else None
        )


@dataclass(frozen=True)
class Mirror:
    name: str
    template: str
    format: str
    note: str


@dataclass(frozen=True)
class Matrix:
    releases: dict[str, Release]
    variants: dict[str, Variant]
    template: str
    family: tuple[str, ...]
    per_variant: tuple[str, ...]
    mirrors: dict[str, Mirror]
    sources: dict[str, str]
    path: Path


def _compat_drivers() -> str:
    """'450.80.02 or newer runs every CUDA 11 build, ...' from the driver table."""
    from provision.hardware.machine import driver_tables

    table = driver_tables()["minor_compat_min_driver"]
    return ", ".join(
        f"{table[major]} or newer runs every CUDA {major} build" for major in sorted(table, key=int)
    )


@lru_cache(maxsize=1)
def matrix() -> Matrix:
    path = data_file("torch_matrix.toml")
    raw = load_table(path.name)
    variants = {
        name: Variant(
            name=name,
            cuda=row.get("cuda", ""),
            min_driver=row.get("min_driver"),
            full_driver=row.get("full_driver"),
            min_cc=_cc(row["min_cc"]) if "min_cc" in row else None,
            max_cc=_cc(row["max_cc"]) if "max_cc" in row else None,
            source=row.get("source", ""),
        )
        for name, row in raw["variant"].items()
    }
    releases = {
        row["torch"]: Release(
            torch=row["torch"],
            torchvision=row.get("torchvision"),
            torchaudio=row.get("torchaudio"),
            variants=tuple(row["variants"]),
            pypi_variant=row.get("pypi_variant"),
            python=tuple(row["python"]) if "python" in row else None,  # type: ignore[arg-type]
            sources=tuple(row.get("sources", ())),
            note=row.get("note", ""),
        )
        for row in raw["release"]
    }
    mirrors = {
        name: Mirror(name, row["template"], row.get("format", "simple"), row.get("note", ""))
        for name, row in raw["mirror"].items()
    }
    return Matrix(
        releases=releases,
        variants=variants,
        template=raw["index"]["template"],
        family=tuple(raw["index"]["family"]),
        per_variant=tuple(raw["index"]["per_variant"]),
        mirrors=mirrors,
        sources=raw["sources"],
        path=path,
    )


def release_for(torch_version: str) -> Release:
    """The matrix row for a torch version (its public part: 2.4.0+cu121 -> 2.4.0)."""
    public = torch_version.split("+", 1)[0]
    table = matrix().releases
    if public in table:
        return table[public]
    known = sorted(table, key=_vkey)
    raise ProvisionError(
        f"torch {public} is not in provision's torch matrix ({matrix().path}).",
        f"Pin a torch release it knows ({known[0]} .. {known[-1]}), or add a row for {public} "
        "with its variants and source.",
    )


def variant_info(name: str) -> Variant:
    table = matrix().variants
    if name in table:
        return table[name]
    # A variant the table has no row for still has a CUDA version in its name (cu121 -> 12.1).
    match = re.fullmatch(r"cu([0-9]+)([0-9])", name)
    if not match:
        raise ProvisionError(
            f"'{name}' is not a torch variant.",
            "Variants look like cu124, cu128 or cpu (or 'pypi' for PyPI's build).",
        )
    return Variant(name=name, cuda=f"{int(match.group(1))}.{match.group(2)}")


def check_python(release: Release, python: str) -> None:
    if not re.fullmatch(r"3\.[0-9]+", python):
        raise ProvisionError(
            f"Python version '{python}' is not of the form 3.X.", "e.g. --python 3.11"
        )
    if release.python is None:
        return
    low, high = release.python
    if not _vkey(low) <= _vkey(python) <= _vkey(high):
        raise ProvisionError(
            f"torch {release.torch} has no wheels for Python {python}: it is built for "
            f"Python {low} to {high}.",
            f"Use --python with a version from {low} to {high}, or pin another torch.",
        )


# --- rules 1-5 -------------------------------------------------------------------------------


@dataclass
class VariantChoice:
    torch: str
    variant: str
    rule: str  # "1-5" rule number that decided, or "cpu", "asked", "assumed"
    reason: str
    warnings: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (variant, why)
    candidates: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "torch": self.torch,
            "variant": self.variant,
            "rule": self.rule,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "dropped": [{"variant": v, "why": w} for v, w in self.dropped],
            "candidates": list(self.candidates),
            "steps": list(self.steps),
        }


def _gpu_words(facts: DriverFacts) -> str:
    ccs = sorted(set(facts.compute_capabilities))
    names = sorted(set(facts.gpu_names))
    label = f" ({', '.join(names)})" if names else ""
    return "compute capability " + ", ".join(cc_text(c) or "?" for c in ccs) + label


def _cc_filter(release: Release, facts: DriverFacts) -> tuple[list[Variant], list[tuple[str, str]]]:
    kept, dropped = [], []
    for name in release.variants:
        variant = variant_info(name)
        bad = [cc for cc in facts.compute_capabilities if not variant.runs(cc)]
        if bad:
            dropped.append(
                (
                    name,
                    f"its kernels cover compute capability {variant.cc_range()}, "
                    f"not {', '.join(cc_text(c) or '?' for c in sorted(set(bad)))}",
                )
            )
        else:
            kept.append(variant)
    return kept, dropped


def _driver_runs(variant: Variant, driver: str) -> bool:
    return variant.min_driver is None or _vkey(driver) >= _vkey(variant.min_driver)


def choose_variant(
    release: Release, facts: DriverFacts, requested: str | None = None, _suggest: bool = True
) -> VariantChoice:
    """Apply rules 1-5 (or honour an asked-for variant) and say why, step by step."""
    steps: list[str] = [
        f"torch {release.torch} is built for {', '.join(release.variants)} on the PyTorch index; "
        f"PyPI's Linux wheel is {release.pypi_variant}.",
        f"Machine: {facts.describe()}"
        + (f"; GPUs: {_gpu_words(facts)}" if facts.compute_capabilities else "")
        + ".",
    ]
    if requested:
        return _asked(release, facts, requested, steps)
    if not facts.has_driver and not (facts.planned and facts.gpu_names):
        steps.append("No driver: the CPU build.")
        return VariantChoice(
            release.torch, CPU, "cpu", facts.describe() + ": the CPU build", steps=steps
        )

    kept, dropped = _cc_filter(release, facts)
    for name, why in dropped:
        steps.append(f"Rule 1 drops {name}: {why}.")
    if not kept:
        raise _nothing_runs(release, facts, dropped, True, _suggest)

    if not facts.has_driver:
        # A GPU described for planning, without --driver: take the build most machines run
        # (PyPI's), and say which driver it needs.
        by_name = {v.name: v for v in kept}
        chosen = by_name.get(release.pypi_variant or "", max(kept, key=lambda v: v.cuda_key))
        reason = (
            f"no driver given for the planned GPU: took {chosen.name} (PyPI's build) "
            f"which needs driver {chosen.min_driver} or newer"
        )
        steps.append(f"No --driver: assumed a driver that runs {chosen.name}.")
        return VariantChoice(
            release.torch,
            chosen.name,
            "assumed",
            reason,
            warnings=[f"Pass --driver to plan for a specific driver; {reason}."],
            dropped=dropped,
            candidates=[v.name for v in kept],
            steps=steps,
        )

    driver = facts.driver_version or ""
    cuda = facts.cuda_version
    if cuda is None:
        raise ProvisionError(
            f"Driver {driver} ({facts.source}) is older than any CUDA version provision knows.",
            "Upgrade the NVIDIA driver: " + _compat_drivers() + ".",
        )
    cuda_key = _vkey(cuda)
    not_newer = [v for v in kept if v.cuda_key <= cuda_key and _driver_runs(v, driver)]
    if not_newer:
        chosen = max(not_newer, key=lambda v: v.cuda_key)
        newest = max((variant_info(n) for n in release.variants), key=lambda v: v.cuda_key)
        if chosen.name == newest.name and cuda_key > newest.cuda_key:
            rule = "4"
            reason = (
                f"driver {driver} supports CUDA {cuda}, newer than every torch "
                f"{release.torch} variant: the highest"
            )
        else:
            rule = "2"
            reason = f"driver {driver} supports CUDA {cuda}"
        steps.append(f"Rule {rule}: {chosen.name} ({reason}).")
        return VariantChoice(
            release.torch,
            chosen.name,
            rule,
            reason,
            dropped=dropped,
            candidates=[v.name for v in kept],
            steps=steps,
        )
    steps.append(f"Rule 2: no variant of CUDA {cuda} or older.")

    same_major = [
        v for v in kept if v.cuda_major == cuda_key[0] and _driver_runs(v, driver) and v.cuda
    ]
    if same_major:
        chosen = min(same_major, key=lambda v: v.cuda_key)
        reason = (
            f"driver {driver} supports CUDA {cuda}; {chosen.name} runs on it through CUDA "
            f"minor-version compatibility (driver {chosen.min_driver} or newer)"
        )
        warning = (
            f"{chosen.name} is newer than the CUDA {cuda} your driver supports: it runs through "
            f"minor-version compatibility, but some JIT features (PTX kernels, nvrtc) may need "
            f"driver {chosen.full_driver} or newer."
        )
        steps.append(f"Rule 3: {chosen.name} ({reason}).")
        return VariantChoice(
            release.torch,
            chosen.name,
            "3",
            reason,
            warnings=[warning],
            dropped=dropped,
            candidates=[v.name for v in kept],
            steps=steps,
        )
    raise _nothing_runs(release, facts, dropped, False, _suggest)


def _asked(release: Release, facts: DriverFacts, asked: str, steps: list[str]) -> VariantChoice:
    name = release.pypi_variant if asked == PYPI else asked
    if not name:
        raise ProvisionError(f"provision does not know PyPI's build of torch {release.torch}.")
    if name != CPU and name not in release.variants:
        raise ProvisionError(
            f"torch {release.torch} has no {name} build.",
            f"Its variants: {', '.join(release.variants)} (or cpu, or pypi for "
            f"{release.pypi_variant}).",
        )
    warnings = []
    if name != CPU:
        variant = variant_info(name)
        if facts.driver_version and not _driver_runs(variant, facts.driver_version):
            warnings.append(
                f"{name} needs driver {variant.min_driver} or newer; the planned driver is "
                f"{facts.driver_version}."
            )
        bad = [cc for cc in facts.compute_capabilities if not variant.runs(cc)]
        if bad:
            warnings.append(f"{name} does not cover {_gpu_words(facts)}.")
    why = "asked for" + (f" (pypi = PyPI's build, {name})" if asked == PYPI else "")
    steps.append(f"Variant {name}: {why}.")
    return VariantChoice(release.torch, name, "asked", why, warnings=warnings, steps=steps)


def _nothing_runs(
    release: Release,
    facts: DriverFacts,
    dropped: list[tuple[str, str]],
    cc_problem: bool,
    suggest: bool,
) -> ProvisionError:
    """Rule 5: name the driver, the torch version, the variants and what would work."""
    driver = facts.driver_version
    what = (
        f"the GPUs ({_gpu_words(facts)})"
        if cc_problem
        else f"driver {driver} (supports CUDA {facts.cuda_version})"
    )
    message = (
        f"No torch {release.torch} build runs on {what}: it is built for "
        f"{', '.join(release.variants)}."
    )
    if dropped:
        message += " " + "; ".join(f"{v}: {why}" for v, why in dropped) + "."
    fixes = []
    if not cc_problem:
        kept, _ = _cc_filter(release, facts)
        lowest = min(kept, key=lambda v: v.cuda_key)
        fixes.append(f"upgrade the driver to {lowest.min_driver} or newer (runs {lowest.name})")
    other = _torch_that_works(facts, exclude=release.torch) if suggest else None
    if other:
        fixes.append(f"use torch {other[0]} ({other[1]})")
    hint = None
    if len(fixes) == 1:
        hint = fixes[0][0].upper() + fixes[0][1:] + "."
    elif fixes:
        hint = "Either " + ", or ".join(fixes) + "."
    return ProvisionError(message, hint)


def _torch_that_works(facts: DriverFacts, exclude: str) -> tuple[str, str] | None:
    """The newest torch release whose variants run on these facts (for rule 5's hint)."""
    for version in sorted(matrix().releases, key=_vkey, reverse=True):
        if version == exclude:
            continue
        try:
            choice = choose_variant(matrix().releases[version], facts, _suggest=False)
        except ProvisionError:
            continue
        return version, choice.variant
    return None


# --- indexes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchIndex:
    """Where the torch family comes from. route: pypi, pytorch, mirror:<name> or custom."""

    url: str
    route: str
    format: str = "simple"  # or "flat" (a page of links, like pip's -f)
    variant: str = ""

    @property
    def local_label(self) -> bool:
        """Wheels on the PyTorch index and its mirrors carry +<variant>; PyPI's do not."""
        return self.route != PYPI

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "route": self.route, "format": self.format}


def torch_index(
    release: Release, variant: str, choice: str | None, default_index: str = PYPI_URL
) -> TorchIndex:
    """Variant + `--torch-index` (None, 'pypi', a mirror name, a template or a URL) -> index."""
    data = matrix()
    on_pypi = variant == release.pypi_variant
    if choice is None:
        if on_pypi:
            return TorchIndex(default_index, PYPI, variant=variant)
        return TorchIndex(data.template.format(variant=variant), "pytorch", variant=variant)
    if choice == PYPI:
        if not on_pypi:
            raise ProvisionError(
                f"PyPI's torch {release.torch} is built with {release.pypi_variant}, "
                f"not {variant}.",
                f"Use --variant pypi (with --torch-index pypi or without) to take PyPI's own "
                f"{release.pypi_variant} build, or drop --torch-index pypi to take {variant} "
                "from the PyTorch index.",
            )
        return TorchIndex(default_index, PYPI, variant=variant)
    if choice in data.mirrors:
        mirror = data.mirrors[choice]
        route = "pytorch" if choice == "official" else f"mirror:{choice}"
        return TorchIndex(mirror.template.format(variant=variant), route, mirror.format, variant)
    if "{variant}" in choice:
        return TorchIndex(choice.format(variant=variant), "custom", variant=variant)
    if re.match(r"^(https?|file)://", choice):
        return TorchIndex(choice, "custom", variant=variant)
    if Path(choice).expanduser().is_dir():
        return TorchIndex(Path(choice).expanduser().resolve().as_uri(), "custom", "flat", variant)
    raise ProvisionError(
        f"--torch-index {choice!r} is not a mirror name, a URL or a template.",
        f"Use one of {', '.join(sorted(data.mirrors))}, pypi, a URL, or a template such as "
        "https://mirror.example/whl/{variant}.",
    )


# --- the plan: rewritten requirements ---------------------------------------------------------


@dataclass
class TorchPlan:
    release: Release
    choice: VariantChoice
    index: TorchIndex
    requirements: list[str]  # the profile's packages with the family pinned to the variant
    routed: list[str]  # package names that must come from `index`
    rewrites: list[str]  # "2.4.0+cu121 -> 2.4.0+cu124: driver ... supports CUDA 12.4"
    python: str

    @property
    def variant(self) -> str:
        return self.choice.variant

    @property
    def torch_version(self) -> str:
        """The version that will be locked: 2.4.0+cu124 on the PyTorch index, 2.4.0 on PyPI."""
        return _pinned(self.release.torch, self.variant, self.index)

    def to_json(self) -> dict[str, Any]:
        return {
            "torch": self.torch_version,
            "variant": self.variant,
            "python": self.python,
            "choice": self.choice.to_json(),
            "index": self.index.to_json(),
            "requirements": list(self.requirements),
            "routed": list(self.routed),
            "rewrites": list(self.rewrites),
        }


def _pinned(version: str, variant: str, index: TorchIndex) -> str:
    return f"{version}+{variant}" if index.local_label else version


# The common form of a profile's line, `name[extras]` and comma-separated clauses with PEP 440
# versions, no marker, no URL: parsed here without importing packaging.requirements (it compiles
# its grammar at import, tens of ms of every `provision lock`). Anything else, invalid lines
# included, goes to packaging, which gives the answer and the error message.
_PEP440 = (
    r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?"
)
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_CLAUSE = re.compile(rf"\s*(===|==|!=|~=|<=|>=|<|>)\s*({_PEP440}(?:\.\*)?)\s*", re.IGNORECASE)
_SIMPLE = re.compile(rf"\s*({_NAME})\s*(?:\[\s*({_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?([^\[\];@]*)$")


@dataclass(frozen=True)
class _Clause:
    operator: str
    version: str


@dataclass(frozen=True)
class _SimpleRequirement:
    """What plan_torch reads of packaging's Requirement: name, extras, specifier, marker."""

    name: str
    extras: frozenset[str]
    specifier: tuple[_Clause, ...]
    marker: None = None


def _parse_simple(requirement: str) -> _SimpleRequirement | None:
    match = _SIMPLE.match(requirement)
    if not match:
        return None
    name, extras, rest = match.groups()
    clauses: list[_Clause] = []
    if rest.strip():
        for part in rest.split(","):
            clause = _CLAUSE.fullmatch(part)
            if not clause:
                return None
            operator, version = clause.groups()
            if version.endswith(".*") and operator not in ("==", "!="):
                return None  # packaging refuses it: let it say so
            if "+" in version and operator not in ("==", "===", "!="):
                return None
            if operator == "~=" and "." not in version.split("+")[0]:
                return None  # ~= needs two release parts
            clauses.append(_Clause(operator, version))
    names = frozenset(e.strip() for e in extras.split(",")) if extras else frozenset()
    return _SimpleRequirement(name, names, tuple(clauses))


def _parse(requirement: str) -> Any:
    simple = _parse_simple(requirement)
    if simple is not None:
        return simple
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(requirement)
    except InvalidRequirement as exc:
        raise ProvisionError(
            f"Requirement {requirement!r} is not valid ({exc}).",
            "Write it as pip does, e.g. transformers==4.51.3.",
        ) from exc


def _exact(req: Any) -> str | None:
    pins = [s.version for s in req.specifier if s.operator in ("==", "===")]
    return pins[0] if pins else None


def _rebuild(req: Any, version: str) -> str:
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}=={version}{marker}"


def plan_torch(
    packages: Sequence[str],
    facts: DriverFacts,
    python: str,
    torch_index_choice: str | None = None,
    variant: str | None = None,
    default_index: str = PYPI_URL,
) -> TorchPlan:
    """Choose the variant for the packages' torch pin and rewrite the torch family to it."""
    data = matrix()
    parsed = [(_parse(p), p) for p in packages]
    torch_reqs = [r for r, _ in parsed if r.name.lower() == "torch"]
    if not torch_reqs or not _exact(torch_reqs[0]):
        raise ProvisionError(
            "The packages have no exact torch pin (torch==X.Y.Z).",
            "Add one to the profile's [tasks.<task>] packages.",
        )
    asked_pin = _exact(torch_reqs[0]) or ""
    release = release_for(asked_pin)
    check_python(release, python)
    choice = choose_variant(release, facts, variant)
    index = (
        TorchIndex(data.template.format(variant=CPU), "pytorch", variant=CPU)
        if choice.variant == CPU and torch_index_choice in (None, "official")
        else torch_index(release, choice.variant, torch_index_choice, default_index)
    )

    requirements: list[str] = []
    routed: list[str] = []
    rewrites: list[str] = []
    for req, text in parsed:
        name = req.name.lower()
        if name in data.family:
            paired = release.paired(name)
            if paired is None:
                last = max(
                    (r for r in matrix().releases.values() if r.paired(name)),
                    key=lambda r: _vkey(r.torch),
                    default=None,
                )
                raise ProvisionError(
                    f"torch {release.torch} has no {name} release to pair with.",
                    f"Remove {name} from the profile's packages"
                    + (
                        f" (the last is {name} {last.paired(name)}, with torch {last.torch})."
                        if last
                        else "."
                    ),
                )
            pin = _exact(req)
            if pin is not None and pin.split("+", 1)[0] != paired:
                raise ProvisionError(
                    f"{name}=={pin} is not built with torch {release.torch}: {name} {paired} is.",
                    f"Pin {name}=={paired} in the profile (or leave its version out).",
                )
            new = _pinned(paired, choice.variant, index)
            requirements.append(_rebuild(req, new))
            routed.append(name)
            if pin is not None and pin != new:
                where = "" if index.local_label else f" (PyPI's build, {choice.variant})"
                rewrites.append(f"{pin} -> {new}{where}: {choice.reason}")
        elif name in data.per_variant and index.route != PYPI:
            requirements.append(text)
            routed.append(name)
        else:
            requirements.append(text)
    return TorchPlan(release, choice, index, requirements, routed, rewrites, python)
