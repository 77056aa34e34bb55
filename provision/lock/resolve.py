"""Resolution through uv: requirement sets in, a PEP 751 pylock.toml (as uv writes it) out.

uv is given everything explicitly and nothing else: a generated pyproject.toml in a temporary folder
holds the requirements, every index (`[[tool.uv.index]]`), the routing of the torch family to its
one index (`explicit = true` + `[tool.uv.sources]`, so it can never come from another index), and
static metadata for packages PyPI has only as source archives (`[[tool.uv.dependency-metadata]]`,
so nothing is built to lock them). uv runs with `--no-config` and without UV_* index variables,
so a stray uv.toml or UV_INDEX_URL cannot add an index behind the lock's back.

Several requirement sets (one per profile, say) resolve together into one environment; when they
cannot, the message names the packages in conflict and which set asked for what.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from provision.attention import (
    AttentionPick,
    is_flash_attn,
    pick_flash_attn,
    requested_versions,
    wheel_table,
)
from provision.errors import CheckFailed, ProvisionError
from provision.lock.indexes import Index, IndexConfig, redact
from provision.resources import load_table
from provision.secrets import redact_text
from provision.tomlparse import loads as parse_toml
from provision.uv import uv_bin, uv_env, uv_version

DEFAULT_PLATFORM = "x86_64-manylinux_2_28"
PROJECT = "provision-resolve"


@dataclass(frozen=True)
class RequirementSet:
    """One input to a resolution: a label people recognise and its requirement strings."""

    label: str  # e.g. "qwen2.5-vl-7b/infer"
    requirements: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """Packages that must come from one index, and the local version label they must carry
    (`cu124` on the PyTorch index; None on PyPI, whose wheels have none)."""

    index: Index
    packages: tuple[str, ...]
    local: str | None = None
    # The packages whose versions carry the label (torch, torchvision, torchaudio); others routed
    # along (xformers, torchao, ...) are checked for their index only through uv's routing.
    labelled: tuple[str, ...] = ("torch", "torchvision", "torchaudio")


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    urls: tuple[str, ...]
    sdist_only: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sdist_only": self.sdist_only}


@dataclass
class Resolution:
    text: str  # the pylock.toml body uv wrote
    packages: list[LockedPackage]
    command: list[str]  # what ran (credentials never appear in it)
    uv_version: str
    seconds: float
    install_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # `text`, parsed
    # flash-attn, when asked for: its release wheel or the named fallback (provision.attention)
    attention: AttentionPick | None = None
    started_early: bool = False  # see provision.lock.early

    def package(self, name: str) -> LockedPackage | None:
        for pkg in self.packages:
            if pkg.name == name:
                return pkg
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "packages": len(self.packages),
            "command": redact_text(" ".join(self.command)),
            "uv_version": self.uv_version,
            "seconds": round(self.seconds, 3),
            "install_env": dict(self.install_env),
            "notes": list(self.notes),
            "attention": self.attention.table() if self.attention else None,
            "started_early": self.started_early,
        }


# --- helpers ---------------------------------------------------------------------------------


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(requirement: str) -> str:
    return canonical(re.split(r"[<>=!~\[;@ (]", requirement.strip(), maxsplit=1)[0])


def _exact_pin(requirement: str) -> str | None:
    match = re.search(r"===?\s*([^\s,;]+)", requirement)
    return match.group(1) if match else None


@lru_cache(maxsize=1)
def static_metadata() -> tuple[dict[str, Any], ...]:
    """provision/data/sdist_metadata.toml: dependency metadata of sdist-only packages."""
    return tuple(load_table("sdist_metadata.toml")["package"])


def strip_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`url` without user:password@, and the user and password it carried."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url, None, None
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, parts.username, parts.password


def _env_name(index_name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", index_name.upper())


# --- the generated project -------------------------------------------------------------------


def _merge(sets: Sequence[RequirementSet]) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """All requirements once each, and package name -> [(set label, requirement)]."""
    merged: list[str] = []
    who: dict[str, list[tuple[str, str]]] = {}
    for rset in sets:
        for req in rset.requirements:
            if req not in merged:
                merged.append(req)
            who.setdefault(_req_name(req), []).append((rset.label, req))
    return merged, who


def _direct_conflicts(who: Mapping[str, list[tuple[str, str]]]) -> list[str]:
    """Exact pins of one package that differ between sets: no resolver needed to see those."""
    lines = []
    for name, asks in who.items():
        pins = {_exact_pin(req) for _, req in asks if _exact_pin(req)}
        if len(pins) > 1:
            lines.append(f"{name}: " + "; ".join(f"{label} needs {req}" for label, req in asks))
    return lines


def split_flash_attn(
    sets: Sequence[RequirementSet],
) -> tuple[list[RequirementSet], str | None]:
    """The sets without their flash-attn requirement (whose dependencies take its place), and
    that requirement: flash-attn is installed from a release wheel the lock picks for the
    resolved torch (provision.attention), never resolved from PyPI's source archive."""
    asked: str | None = None
    out = []
    for rset in sets:
        kept = []
        for req in rset.requirements:
            if is_flash_attn(req):
                requested_versions(req)  # a release the table knows, or exit 2 before uv runs
                asked = asked if asked and "==" in asked else req.strip()
                kept += [r for r in wheel_table()["requires"] if r not in kept]
            else:
                kept.append(req)
        out.append(RequirementSet(rset.label, tuple(kept)))
    return out, asked


def _attention(
    asked: str,
    resolution: Resolution,
    routes: Sequence[Route],
    python: str,
    platform: str,
    min_cc: tuple[int, int] | None,
) -> AttentionPick:
    """The flash-attn wheel for the torch uv locked (its variant from the route's label, or the
    PyPI build's), or the named fallback."""
    from provision.torch_select import release_for, variant_info

    torch = resolution.package("torch")
    if torch is None:
        return pick_flash_attn(asked, None, None, python, platform)
    version, _, local = torch.version.partition("+")
    variant: str | None = local or next(
        (r.local for r in routes if "torch" in r.packages and r.local), None
    )
    if variant is None:
        try:
            variant = release_for(version).pypi_variant
        except ProvisionError:
            variant = None
    cuda = None
    if variant and variant != "cpu":
        try:
            cuda = variant_info(variant).cuda
        except ProvisionError:
            cuda = None
    return pick_flash_attn(asked, version, variant, python, platform, cuda=cuda, min_cc=min_cc)


def _bare(index: Index, secrets: dict[str, str]) -> str:
    """The index URL without credentials; these go to uv through its per-index variables."""
    url, user, password = strip_credentials(index.url)
    if user:
        secrets[f"UV_INDEX_{_env_name(index.name)}_USERNAME"] = user
    if password:
        secrets[f"UV_INDEX_{_env_name(index.name)}_PASSWORD"] = password
    return url


def project_toml(
    requirements: Sequence[str],
    python: str,
    routes: Sequence[Route],
    secrets: dict[str, str],
) -> str:
    """The pyproject.toml uv resolves: requirements, the routed (explicit) indexes and sources,
    and the static metadata of sdist-only packages. uv reads these from the project even with
    --no-config; the other indexes go on the command line (compile_command)."""
    import tomli_w

    uv_indexes: list[dict[str, Any]] = []
    sources: dict[str, dict[str, str]] = {}
    for route in routes:
        entry: dict[str, Any] = {
            "name": route.index.name,
            "url": _bare(route.index, secrets),
            "explicit": True,
        }
        if route.index.format == "flat":
            entry["format"] = "flat"
        uv_indexes.append(entry)
        for package in route.packages:
            sources[package] = {"index": route.index.name}
    keys = ("name", "version", "requires-dist", "requires-python")
    metadata = [{k: v for k, v in row.items() if k in keys} for row in static_metadata()]
    uv_table: dict[str, Any] = {"dependency-metadata": metadata}
    if uv_indexes:
        uv_table["index"] = uv_indexes
    if sources:
        uv_table["sources"] = sources
    doc: dict[str, Any] = {
        "project": {
            "name": PROJECT,
            "version": "0",
            "requires-python": f">={python}",
            "dependencies": list(requirements),
        },
        "tool": {"uv": uv_table},
    }
    return tomli_w.dumps(doc)


def needed_routes(routes: Sequence[Route], indexes: IndexConfig) -> list[Route]:
    """The routes uv must be told about. A route to the default index, when uv has no other
    index or find-links location to take a package from, changes nothing in what uv locks, and
    uv 0.13 then ignores the previous lock's versions for the routed packages and asks for them
    again: 30-50 ms of each PyPI-torch lock here (issue 17). The locked labels are checked all the
    same (`_check_routes`)."""
    if indexes.extras or indexes.find_links or indexes.no_index:
        return list(routes)
    default = indexes.default
    return [
        route
        for route in routes
        if (route.index.url, route.index.format) != (default.url, default.format)
    ]


def compile_command(
    python: str,
    platform: str,
    indexes: IndexConfig,
    secrets: dict[str, str] | None = None,
    output: str = "pylock.toml",
) -> list[str]:
    """The `uv pip compile` arguments (without the binary). Extra indexes come first, as uv gives
    `--index` priority over `--default-index`; each is named so credentials can stay in the
    environment."""
    secrets = {} if secrets is None else secrets
    command = [
        "pip",
        "compile",
        "pyproject.toml",
        "--format",
        "pylock.toml",
        "--generate-hashes",
        "--python-version",
        python,
        "--python-platform",
        platform,
        "--no-config",
        "--no-header",
        "--index-strategy",
        indexes.strategy,
        "--output-file",
        output,
    ]
    for extra in indexes.extras:
        command += ["--index", f"{extra.name}={_bare(extra, secrets)}"]
    command += ["--default-index", f"{indexes.default.name}={_bare(indexes.default, secrets)}"]
    from provision.secrets import find_links_args

    command += find_links_args([loc for loc, _origin in indexes.find_links], secrets)
    return command


# --- resolving -------------------------------------------------------------------------------


def resolve(
    sets: Sequence[RequirementSet],
    python: str,
    indexes: IndexConfig,
    routes: Sequence[Route] = (),
    platform: str = DEFAULT_PLATFORM,
    uv: str | None = None,
    timeout: float = 900,
    workdir: str | os.PathLike[str] | None = None,
    previous: str | os.PathLike[str] | None = None,
    min_cc: tuple[int, int] | None = None,
) -> Resolution:
    """Resolve the sets together for `python` on `platform`: a PEP 751 lock with hashes.

    A flash-attn requirement is not resolved: its dependencies are, and `attention` says which
    release wheel fits the locked torch or that attention falls back to sdpa (`min_cc`, the
    lowest compute capability planned for, rules out pre-Ampere GPUs).

    `previous` is an earlier lock of the same thing: uv prefers its versions where they still
    satisfy the requirements (as `uv pip compile -o` does with its own output file), so locking
    again does not churn versions and skips the search. None (or --upgrade) starts afresh.

    Raises CheckFailed (exit 1) when the sets cannot be satisfied, naming the packages and which
    set needs what; ProvisionError (exit 2) for an index that is down or is not an index, or a
    Python version or platform no wheel supports.

    This is `start_resolve(...)` and its `result()`: a caller with work of its own to do while
    uv runs calls those two itself.
    """
    with start_resolve(
        sets, python, indexes, routes, platform, uv, timeout, workdir, previous
    ) as pending:
        return pending.result(min_cc)


class PendingResolution:
    """A `uv pip compile` that is running: `result()` waits for it and reads its lock. Use it as
    a context manager (or call `close()`), so that uv is stopped and its folder removed when the
    caller fails before asking for the result."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        tmp: tempfile.TemporaryDirectory[str],
        command: list[str],
        sets: Sequence[RequirementSet],
        who: Mapping[str, list[tuple[str, str]]],
        indexes: IndexConfig,
        routes: Sequence[Route],
        python: str,
        platform: str,
        flash_attn: str | None,
        timeout: float,
        started: float,
        early: bool = False,
    ) -> None:
        self.process = process
        self.started = started
        self.early = early  # started on the last run's input (provision.lock.early)
        self._tmp = tmp
        self.command = command
        self._sets, self._who, self._indexes, self._routes = sets, who, indexes, routes
        self._python, self._platform, self._flash_attn = python, platform, flash_attn
        self._timeout = timeout

    def __enter__(self) -> PendingResolution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop uv if it still runs and remove its folder (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        self._tmp.cleanup()

    def result(
        self,
        min_cc: tuple[int, int] | None = None,
        known: tuple[str, dict[str, Any]] | None = None,
    ) -> Resolution:
        """Wait for uv and return its lock, checked. `min_cc`: see `resolve`. `known` is a lock
        text already parsed (text, data), e.g. the previous lock's uv part parsed while uv ran:
        when uv writes that very text (trailing newlines aside), it is not parsed again."""
        try:
            left = self._timeout - (time.perf_counter() - self.started)
            _out, stderr = self.process.communicate(timeout=max(left, 0.001))
        except subprocess.TimeoutExpired as exc:
            raise ProvisionError(
                f"uv did not finish resolving in {self._timeout:.0f} s.",
                "An index may be very slow; check the indexes listed by --explain.",
            ) from exc
        seconds = time.perf_counter() - self.started
        if self.process.returncode != 0:
            raise explain_failure(
                stderr,
                self._sets,
                self._who,
                self._indexes,
                self._routes,
                self._python,
                self._platform,
            )
        text = Path(self._tmp.name, "pylock.toml").read_text(encoding="utf-8")
        self.close()
        # Parsed once per run: write_lock and the checks use `data`.
        same = known is not None and known[0].rstrip("\n") == text.rstrip("\n")
        data = known[1] if known is not None and same else parse_toml(text)
        packages = [_locked(p) for p in data.get("packages", [])]
        resolution = Resolution(
            text, packages, ["uv", *self.command], uv_version(), seconds, data=data
        )
        resolution.started_early = self.early  # --explain says so (LockResult.explain)
        _check_routes(resolution, self._routes)
        _sdist_notes(resolution)
        if self._flash_attn:
            resolution.attention = _attention(
                self._flash_attn, resolution, self._routes, self._python, self._platform, min_cc
            )
            resolution.notes.append(resolution.attention.note())
        return resolution


def start_resolve(
    sets: Sequence[RequirementSet],
    python: str,
    indexes: IndexConfig,
    routes: Sequence[Route] = (),
    platform: str = DEFAULT_PLATFORM,
    uv: str | None = None,
    timeout: float = 900,
    workdir: str | os.PathLike[str] | None = None,
    previous: str | os.PathLike[str] | None = None,
) -> PendingResolution:
    """Start uv on the sets (see `resolve`) and return at once: the caller does what does not
    need uv's answer while uv resolves, then asks `result()` (issue 17: the resolution is most
    of a lock's wall time, and provision's own work overlaps it on a second core)."""
    if not sets:
        raise ProvisionError("Nothing to resolve: no requirement sets were given.")
    merged, who = _merge(sets)
    conflicts = _direct_conflicts(who)
    if conflicts:
        raise CheckFailed(
            "The requirements pin the same package to different versions:\n  "
            + "\n  ".join(conflicts),
            "Make the pins agree (or resolve these sets into separate environments).",
        )
    split, flash_attn = split_flash_attn(sets)
    merged, _ = _merge(split)
    secrets: dict[str, str] = {}
    pyproject = project_toml(merged, python, needed_routes(routes, indexes), secrets)
    command = compile_command(python, platform, indexes, secrets)
    if python == f"{sys.version_info[0]}.{sys.version_info[1]}":
        # The interpreter uv needs (for building an sdist's metadata) is this one; otherwise uv
        # searches PATH for a python3.X and runs it, which through pyenv's shims is ~30 shell
        # processes and 0.5 s of every lock here (--python-version still sets the target).
        command += ["--python", sys.executable]
    binary = uv or uv_bin()
    env = uv_env(scrub=True)
    env.update(secrets)

    given = str(previous) if previous is not None and Path(previous).is_file() else None
    early = sys.modules.get("provision.lock.early")  # loaded by cli/quick.py for a lock
    started_early = None
    if early is not None and workdir is None:
        at = str(previous) if previous is not None else None
        started_early = early.claim(binary, command, pyproject, env, at, not secrets)
    if started_early is not None:
        process, tmp, started = started_early.process, started_early.tmp, started_early.started
    else:
        tmp = tempfile.TemporaryDirectory(prefix="provision-resolve-", dir=workdir)
        try:
            Path(tmp.name, "pyproject.toml").write_text(pyproject, encoding="utf-8")
            if given is not None:
                shutil.copyfile(given, Path(tmp.name, "pylock.toml"))
            started = time.perf_counter()
            process = subprocess.Popen(
                [binary, *command],
                cwd=tmp.name,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except BaseException:
            tmp.cleanup()
            raise
        if early is not None:
            early.save()  # while uv runs
    return PendingResolution(
        process,
        tmp,
        command,
        sets,
        who,
        indexes,
        routes,
        python,
        platform,
        flash_attn,
        timeout,
        started,
        early=started_early is not None,
    )


def _locked(entry: Mapping[str, Any]) -> LockedPackage:
    urls = [w.get("url") or w.get("path", "") for w in entry.get("wheels", [])]
    sdist = entry.get("sdist")
    if sdist:
        urls.append(sdist.get("url") or sdist.get("path", ""))
    return LockedPackage(
        name=canonical(entry["name"]),
        version=str(entry.get("version", "")),
        urls=tuple(urls),
        sdist_only=not entry.get("wheels") and bool(sdist),
    )


def _check_routes(resolution: Resolution, routes: Sequence[Route]) -> None:
    """Belt and braces: every routed package carries its index's label (or none, on PyPI)."""
    for route in routes:
        for name in route.packages:
            if name not in route.labelled:
                continue
            pkg = resolution.package(canonical(name))
            if pkg is None:
                continue
            local = pkg.version.partition("+")[2] or None
            if local != route.local:
                want = f"+{route.local}" if route.local else "no local label"
                raise ProvisionError(
                    f"uv locked {pkg.name} {pkg.version}, not the build routed to "
                    f"{route.index.public_url} ({want}).",
                    "This is a bug in provision's routing; please report it with --explain output.",
                )


def _sdist_notes(resolution: Resolution) -> None:
    known = {(canonical(r["name"]), r["version"]): r for r in static_metadata()}
    for pkg in resolution.packages:
        if not pkg.sdist_only:
            continue
        row = known.get((pkg.name, pkg.version))
        if row:
            resolution.install_env.update(row.get("install_env", {}))
            resolution.notes.append(
                f"{pkg.name} {pkg.version} has no wheel: locked without building it (its "
                f"metadata is in provision/data/sdist_metadata.toml); it is built at install"
                + (
                    f" with {', '.join(f'{k}={v}' for k, v in row['install_env'].items())}"
                    if row.get("install_env")
                    else ""
                )
                + "."
            )
        else:
            resolution.notes.append(
                f"{pkg.name} {pkg.version} has no wheel: uv built it to read its metadata, "
                "and it is built again at install."
            )


# --- failures --------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NETWORK = re.compile(
    r"(Failed to fetch|error sending request|tcp connect error|dns error|Connection refused|"
    r"operation timed out|Could not connect|failed to lookup address|Request failed after)",
    re.IGNORECASE,
)
_URL = re.compile(r"`((?:https?|file)://[^`\s]+)`")
_PY_TAG = re.compile(
    r"(\S+) has no wheels with a matching Python (?:ABI|version|implementation) tag"
    r"|(\S+) only has wheels with the following Python"
    r"|(\S+) has no wheels with a matching platform tag"
)


def _clean(stderr: str) -> list[str]:
    lines = []
    for raw in _ANSI.sub("", stderr).splitlines():
        line = raw.strip().lstrip("×╰─▶│├ ").strip()
        line = re.sub(r"^(error|cause):\s*", "", line)
        if line:
            lines.append(line)
    return lines


def _trim(lines: Sequence[str], limit: int = 8) -> list[str]:
    out = []
    for line in lines:
        if line.startswith("No solution found"):
            continue
        line = re.sub(r"\b" + PROJECT + r" depends on", "the requirements need", line)
        out.append(line if len(line) <= 400 else line[:397] + "...")
        if len(out) == limit:
            break
    return out


def explain_failure(
    stderr: str,
    sets: Sequence[RequirementSet],
    who: Mapping[str, list[tuple[str, str]]],
    indexes: IndexConfig,
    routes: Sequence[Route],
    python: str,
    platform: str,
) -> ProvisionError:
    """uv's error, trimmed to what a person needs, as ProvisionError (2) or CheckFailed (1)."""
    text = _ANSI.sub("", stderr)
    lines = _clean(stderr)
    all_indexes = [r.index for r in routes] + list(indexes.extras) + [indexes.default]

    if _NETWORK.search(text) and "No solution found" not in text:
        urls = _URL.findall(text)
        where = redact(urls[0]) if urls else "an index"
        problem = _diagnose(all_indexes)
        return ProvisionError(
            f"Could not reach {where}: {problem or _last_cause(lines)}",
            "Check the URL and the network; fix pip's configuration or pass another "
            "--torch-index (--explain lists the indexes and where each came from).",
        )

    if "No solution found" not in text:
        return ProvisionError(
            "uv could not resolve the requirements:\n  " + "\n  ".join(_trim(lines, 6)),
            "Run with --explain to see the indexes and requirements that were used.",
        )

    tag = _PY_TAG.search(text)
    if tag:
        package = next(g for g in tag.groups() if g)
        platform_problem = "platform tag" in tag.group(0)
        target = f"platform {platform}" if platform_problem else f"Python {python}"
        return ProvisionError(
            f"No wheel of {package} for {target}:\n  " + "\n  ".join(_trim(lines, 4)),
            "Use a Python version the wheels are built for (--python X.Y)"
            if not platform_problem
            else "Pick a platform the wheels are built for.",
        )

    missing = re.findall(r"(\S+) was not found in the (?:package registry|provided package)", text)
    if missing:
        problems = [p for p in (_diagnose([i]) for i in all_indexes) if p]
        if problems:
            return ProvisionError(
                "An index does not answer as a package index: " + "; ".join(problems),
                "Fix the URL (pip's configuration, or --torch-index).",
            )

    trimmed = _trim(lines)
    named = {canonical(n) for n in re.findall(r"\b([A-Za-z0-9][A-Za-z0-9._-]*)(?=[=<>!~])", text)}
    named |= {canonical(n) for n in missing}
    blame = [f"{label} needs {req}" for name in sorted(named) for label, req in who.get(name, [])]
    message = "The requirements cannot be satisfied together:\n  " + "\n  ".join(trimmed)
    if blame:
        message += "\nAsked for by: " + "; ".join(dict.fromkeys(blame))
    return CheckFailed(
        message,
        "Change one of the pins named above in the profile's [tasks.<task>] packages.",
    )


def _last_cause(lines: Sequence[str]) -> str:
    return lines[-1] if lines else "no answer"


def _diagnose(indexes: Sequence[Index], project: str = "torch") -> str | None:
    """Look at each index the way a resolver would; say what is wrong with the first bad one."""
    for index in indexes:
        problem = probe_index(index.url, index.format, project)
        if problem:
            return f"{index.public_url} ({index.origin}) {problem}"
    return None


def probe_index(url: str, fmt: str = "simple", project: str = "torch") -> str | None:
    """None when `url` answers like a package index; else what is wrong ("is down: ...")."""
    import urllib.error
    import urllib.request

    if url.startswith("file://"):
        path = Path(urlsplit(url).path)
        if not path.is_dir():
            return "does not exist" if not path.exists() else "is not a folder"
        return None
    target = url if fmt == "flat" else url.rstrip("/") + "/"
    request = urllib.request.Request(target, headers={"Accept": "text/html"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read(200_000).decode("utf-8", "replace")
            kind = answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "is not a package index (HTTP 404 for its root)"
        return f"answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"is down ({reason})"
    if "json" in kind and '"projects"' in body:
        return None
    if "<a " not in body.lower():
        return "is not a package index (its page lists no links)"
    return None
