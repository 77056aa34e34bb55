"""Virtual environments: create one with uv, install exactly a PEP 751 lock, find an env's Python.

uv does the work (`uv venv`, `uv pip sync --require-hashes`); this module decides what to ask it,
checks that the lock fits the machine before anything is created, and turns uv's failures into one
message each. Interpreters are never downloaded (UV_PYTHON_DOWNLOADS=never): a research box gets
the Python its owner installed, or a clear message saying which one is missing.

Offline installs: uv 0.13 installs a pylock.toml from the URLs written in it and ignores
`--find-links` for it, so a wheelhouse (`--wheelhouse DIR`, PIP_FIND_LINKS) is honoured by
pointing the lock's wheel and sdist entries at the local files with the same names; uv still checks
every file against the lock's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from provision.atomic import file_lock
from provision.errors import CheckFailed, ProvisionError
from provision.lock.lockfile import read_lock
from provision.procs import exit_on_signals, stop_group
from provision.uv import PYLOCK, SYNC_ARGS, run_uv, uv_bin, uv_env


@dataclass
class EnvResult:
    """What `ensure_env` did: `action` is created, synced or unchanged."""

    env: Path
    python: Path
    python_version: str
    lock: Path
    action: str
    installed: list[str] = field(default_factory=list)  # "name==version" put in
    removed: list[str] = field(default_factory=list)  # "name==version" taken out
    packages: int = 0  # packages in the environment afterwards
    wheelhouse: list[str] = field(default_factory=list)  # local folders wheels came from
    local_files: int = 0  # lock entries served from the wheelhouse
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, and total
    cache_pruned: str = ""  # what `uv cache prune` freed after the install (uv's own summary)
    # The lock's [tool.provision.attention] as installed: flash-attn's wheel, or the fallback
    attention: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        if self.action == "unchanged":
            text = f"{self.env} already matches {self.lock.name}: nothing to do."
        else:
            change = f"{len(self.installed)} installed, {len(self.removed)} removed"
            if self.action == "created":
                text = f"Created {self.env} (Python {self.python_version}) from the lock: {change}."
            else:
                text = f"Synced {self.env} back to the lock: {change}."
        return text + (f" {self.attention['note']}" if self.attention.get("note") else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "env": str(self.env),
            "python": str(self.python),
            "python_version": self.python_version,
            "lock": str(self.lock),
            "action": self.action,
            "installed": self.installed,
            "removed": self.removed,
            "packages": self.packages,
            "wheelhouse": self.wheelhouse,
            "local_files": self.local_files,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "cache_pruned": self.cache_pruned,
            "attention": {k: v for k, v in self.attention.items() if k != "note"},
            "message": self.message,
        }


# --- locating interpreters -------------------------------------------------------------------


def env_python(env: str | os.PathLike[str]) -> Path:
    """The interpreter of the virtual environment at `env` (bin/python, or Scripts\\python.exe)."""
    root = Path(env).expanduser()
    if root.exists() and not root.is_dir():
        raise ProvisionError(
            f"Environment path {root} is a file, not a virtual environment.",
            "Pass --env with a folder (created if missing), or move the file away.",
        )
    for candidate in (root / "bin" / "python", root / "Scripts" / "python.exe"):
        if candidate.exists():
            return candidate.absolute()
    raise ProvisionError(
        f"{root} is not a virtual environment (no bin/python in it).",
        "Create it with `provision setup PROFILE --env PATH`, or pass --python PATH instead.",
    )


def python_for(
    env: str | os.PathLike[str] | None = None, python: str | os.PathLike[str] | None = None
) -> Path:
    """Resolve `--env PATH | --python PATH`; neither: the active virtualenv, else this Python."""
    if env is not None and python is not None:
        raise ProvisionError(
            "Pass either --env or --python, not both.",
            "--env names a virtual environment folder, --python an interpreter.",
        )
    if python is not None:
        path = Path(python).expanduser()
        if path.is_dir():
            raise ProvisionError(
                f"--python {path} is a folder, not an interpreter.",
                f"Use --env {path} for a virtual environment, or name its bin/python.",
            )
        found = path if path.exists() else shutil.which(str(python))
        if not found or not os.access(found, os.X_OK):
            raise ProvisionError(
                f"Python interpreter {python} not found or not executable.",
                "Pass the full path of the interpreter, e.g. --python /opt/venv/bin/python.",
            )
        return Path(found).absolute()
    if env is not None:
        return env_python(env)
    active = os.environ.get("VIRTUAL_ENV")
    if active:
        return env_python(active)
    return Path(sys.executable)


def is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


# --- reading what an environment holds ----------------------------------------------------------


def installed_packages(env: str | os.PathLike[str]) -> dict[str, str]:
    """{normalized name: version} of what is installed in the environment (`uv pip list`)."""
    python = env_python(env)
    proc = run_uv(["pip", "list", "--python", str(python), "--format", "json"])
    if proc.returncode != 0:
        raise ProvisionError(f"Could not list the packages in {env}: {_uv_error(proc.stderr)}")
    return {row["name"]: row["version"] for row in json.loads(proc.stdout or "[]")}


def _env_facts(root: Path) -> tuple[str, int]:
    """(Python version, number of installed distributions) read from the env's files.

    Read rather than asked of uv or the interpreter: this runs on every setup and a subprocess
    each costs more than the answer.
    """
    version = ""
    try:
        for line in (root / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version_info", "version"):
                version = value.strip()
                break
    except OSError:
        pass
    if not version:
        version = python_version(env_python(root))
    sites = [*root.glob("lib/python*/site-packages"), root / "Lib" / "site-packages"]
    count = sum(1 for site in sites if site.is_dir() for _ in site.glob("*.dist-info"))
    return version, count


def python_version(python: Path) -> str:
    proc = subprocess.run(
        [str(python), "-I", "-S", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise ProvisionError(f"{python} does not run: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


# --- the lock -----------------------------------------------------------------------------------


def _load_lock(lock_file: Path) -> dict[str, Any]:
    data = read_lock(lock_file)
    if "lock-version" not in data or not isinstance(data.get("packages"), list):
        raise ProvisionError(
            f"{lock_file} is not a PEP 751 lock (no lock-version or [[packages]]).",
            "Pass a pylock.*.toml written by `provision lock` or `uv pip compile --format "
            "pylock.toml`.",
        )
    return data


def lock_python(data: dict[str, Any]) -> str | None:
    """The Python version a lock was made for: [tool.provision] target, else requires-python."""
    return _named_python(data) or _lower_bound(data.get("requires-python"))


def _named_python(data: dict[str, Any]) -> str | None:
    """The Python a provision lock names in [tool.provision] (its target); None in a bare lock."""
    tool = data.get("tool", {}).get("provision", {})
    for table in (tool.get("target", {}), tool, tool.get("profile", {})):
        value = table.get("python") if isinstance(table, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def _python_requests(data: dict[str, Any], explicit: str | None) -> list[str]:
    """What to ask `uv venv --python` for, best first.

    An explicit choice or the Python a provision lock names is the only answer: its wheels are
    that Python's, so another one would install and then fail on them. A bare requires-python
    (">=3.11", as `uv pip compile --python-version 3.11` writes) asks for its lower bound first,
    whose wheels the lock most likely holds, then for any installed Python that satisfies it
    (whether the lock's wheels fit that one is checked before anything is kept).
    """
    if explicit:
        return [explicit]
    named = _named_python(data)
    if named:
        return [named]
    spec = data.get("requires-python")
    return [r for r in (_lower_bound(spec), spec) if r]


def _lower_bound(spec: str | None) -> str | None:
    """ ">=3.11" -> "3.11": the version `uv pip compile --python-version` wrote the lock for."""
    if not spec:
        return None
    from packaging.specifiers import SpecifierSet

    for item in SpecifierSet(spec):
        if item.operator in (">=", "==", "~=", "==="):
            parts = item.version.rstrip(".*").split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return f"{parts[0]}.{parts[1]}"
    return None


def _entry_filename(entry: dict[str, Any]) -> str | None:
    """The file name of a wheel or sdist entry (PEP 751: `name`, else the url's or path's end)."""
    if entry.get("name"):
        return str(entry["name"])
    where = entry.get("url") or entry.get("path")
    if not where:
        return None
    return unquote(Path(urlparse(str(where)).path).name) if "://" in where else Path(where).name


def _package_files(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{file name: (package, version)} for every wheel and sdist the lock names."""
    out: dict[str, tuple[str, str]] = {}
    for pkg in data.get("packages", []):
        entries = list(pkg.get("wheels") or [])
        if isinstance(pkg.get("sdist"), dict):
            entries.append(pkg["sdist"])
        for entry in entries:
            name = _entry_filename(entry)
            if name:
                out[name] = (str(pkg.get("name")), str(pkg.get("version", "?")))
    return out


# --- wheelhouses --------------------------------------------------------------------------------


def find_links(wheelhouse: str | os.PathLike[str] | None = None) -> list[str]:
    """The wheel folders to use: --wheelhouse first, then PIP_FIND_LINKS (space separated)."""
    links: list[str] = []
    if wheelhouse is not None:
        folder = Path(wheelhouse).expanduser()
        if not folder.is_dir():
            raise ProvisionError(
                f"Wheelhouse {folder} is not a folder.",
                "Pass --wheelhouse with the folder holding the .whl files you carried over.",
            )
        links.append(str(folder.absolute()))
    for item in os.environ.get("PIP_FIND_LINKS", "").split():
        if item not in links:
            links.append(item)
    return links


def _local_folders(links: list[str]) -> list[Path]:
    folders = []
    for link in links:
        path = Path(unquote(urlparse(link).path)) if link.startswith("file:") else Path(link)
        if "://" in link and not link.startswith("file:"):
            continue  # a remote find-links page: uv is given it, nothing to map locally
        if path.is_dir():
            folders.append(path.absolute())
    return folders


def localize_lock(
    data: dict[str, Any], lock_dir: Path, folders: list[Path]
) -> tuple[dict[str, Any], int]:
    """A copy of the lock whose wheel/sdist entries point at same-named files in `folders`.

    Relative `path` entries are made absolute (the copy is written elsewhere). Hashes stay, so uv
    still verifies each local file against the lock. Returns the copy and how many entries moved.
    """
    import copy

    available: dict[str, Path] = {}
    for folder in folders:
        for item in folder.iterdir():
            if item.is_file() and item.name not in available:
                available[item.name] = item.absolute()
    out = copy.deepcopy(data)
    moved = 0
    for pkg in out.get("packages", []):
        files = list(pkg.get("wheels") or [])
        files += [pkg[key] for key in ("sdist", "archive") if isinstance(pkg.get(key), dict)]
        for entry in [*files, pkg.get("directory"), pkg.get("vcs")]:
            if (
                isinstance(entry, dict)
                and "path" in entry
                and not Path(entry["path"]).is_absolute()
            ):
                entry["path"] = str((lock_dir / entry["path"]).absolute())
        for entry in files:
            name = _entry_filename(entry)
            if name in available:
                entry.pop("url", None)
                entry["path"] = str(available[name])
                moved += 1
    return out, moved


# --- does the lock fit this interpreter? -------------------------------------------------------

# Run by the target interpreter with `-I -S` (stdlib only) plus a private copy of `packaging`, so
# markers and wheel tags are judged by the Python that will run the code, not by provision's.
_FIT_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

with open(sys.argv[2], encoding="utf-8") as handle:
    lock = json.load(handle)
tags = list(sys_tags())
accepted = set(tags)
version = "%d.%d.%d" % sys.version_info[:3]
out = {"python": version, "best_tag": str(tags[0]) if tags else "",
       "platforms": sorted({t.platform for t in tags}),
       "interpreters": sorted({t.interpreter for t in tags}), "problems": []}

def applies(marker):
    if not marker:
        return True
    try:
        return Marker(marker).evaluate(context="lock_file")
    except TypeError:
        return Marker(marker).evaluate()

spec = lock.get("requires-python")
if spec and not SpecifierSet(spec).contains(version, prereleases=True):
    out["problems"].append({"kind": "python", "requires": spec})
for pkg in lock.get("packages", []):
    if not applies(pkg.get("marker")):
        continue
    spec = pkg.get("requires-python")
    if spec and not SpecifierSet(spec).contains(version, prereleases=True):
        out["problems"].append({"kind": "python", "requires": spec, "name": pkg.get("name"),
                                "version": pkg.get("version")})
        continue
    wheel_tags, fits = set(), False
    for name in pkg.get("wheel_files", []):
        try:
            found = parse_wheel_filename(name)[3]
        except InvalidWheelFilename:
            continue
        if found & accepted:
            fits = True
            break
        wheel_tags |= {str(t) for t in found}
    if pkg.get("wheel_files") and not fits:
        out["problems"].append({"kind": "wheel", "name": pkg.get("name"),
                                "version": pkg.get("version"), "wheel_tags": sorted(wheel_tags)})
print(json.dumps(out))
"""


def check_lock_fits(python: Path, data: dict[str, Any], lock_file: Path) -> dict[str, Any]:
    """Stop with one message if the lock was made for another Python or platform than `python`.

    A package whose lock entry has wheels, none of which this interpreter accepts, is refused even
    if it has an sdist: such a lock was resolved for another machine, and building ML packages
    from source is never what the user wanted. Returns the probe's report (Python version, tags).
    """
    return _finish_probe(_start_probe(python, data), python, lock_file)


@dataclass
class _Probe:
    """The fit probe running in the target interpreter (it reads the slim lock from a file)."""

    proc: subprocess.Popen[str]
    payload: Path

    def wait(self, python: Path, lock_file: Path) -> str:
        try:
            out, err = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise ProvisionError(
                f"{python} did not answer within 120 s while checking the lock."
            ) from None
        finally:
            self.payload.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            raise ProvisionError(
                f"Could not check {lock_file} against {python}: {err.strip()[-400:]}"
            )
        return out


def _start_probe(python: Path, data: dict[str, Any]) -> _Probe:
    slim = {
        "requires-python": data.get("requires-python"),
        "packages": [
            {
                "name": pkg.get("name"),
                "version": pkg.get("version"),
                "marker": pkg.get("marker"),
                "requires-python": pkg.get("requires-python"),
                "wheel_files": [_entry_filename(w) for w in pkg.get("wheels") or []],
            }
            for pkg in data.get("packages", [])
        ],
    }
    fd, name = tempfile.mkstemp(prefix="provision-probe-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(slim, handle)
    proc = subprocess.Popen(
        [str(python), "-I", "-S", "-c", _FIT_PROBE, str(_probe_libs()), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return _Probe(proc, Path(name))


def _finish_probe(probe: _Probe, python: Path, lock_file: Path) -> dict[str, Any]:
    out = probe.wait(python, lock_file)
    report = json.loads(out)
    problems = report["problems"]
    if not problems:
        return report
    here = f"Python {report['python']} ({report['best_tag']})"
    python_rules = [p for p in problems if p["kind"] == "python"]
    if python_rules:
        rule = python_rules[0]
        what = f"{rule['name']} {rule['version']} needs" if rule.get("name") else "it needs"
        raise ProvisionError(
            f"Lockfile {lock_file} was made for another Python: {what} Python "
            f"{rule['requires']}, the environment has {report['python']}.",
            _relock_hint(report["python"]),
        )
    platforms = set(report["platforms"]) | {"any"}
    other_python = [
        p for p in problems if any(t.split("-")[-1] in platforms for t in p["wheel_tags"])
    ]
    shown = ", ".join(
        f"{p['name']} {p['version']} ({', '.join(p['wheel_tags'][:3]) or 'no usable wheel'})"
        for p in problems[:4]
    )
    more = f" and {len(problems) - 4} more" if len(problems) > 4 else ""
    if other_python and len(other_python) == len(problems):
        raise ProvisionError(
            f"Lockfile {lock_file} was made for another Python: {shown}{more} have no wheel "
            f"for {here}.",
            _relock_hint(report["python"]),
        )
    raise ProvisionError(
        f"Lockfile {lock_file} was made for another platform: {shown}{more} have no wheel for "
        f"this machine ({here}).",
        "Re-lock for this machine (`provision lock PROFILE` here), or install on the platform the "
        "lock names.",
    )


def _probe_libs() -> Path:
    """A private copy of `packaging` for the probe, kept in the user's cache.

    Kept rather than copied per call so the interpreter's bytecode for it survives (importing it
    from source costs ~0.2 s); one copy per packaging version, made atomically by a rename.
    """
    import packaging

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "provision"
    home = base / "probe" / f"packaging-{packaging.__version__}"
    if (home / "packaging" / "__init__.py").is_file():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".packaging-", dir=home.parent))
    shutil.copytree(Path(packaging.__file__).parent, staging / "packaging")
    try:
        os.replace(staging, home)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _relock_hint(version: str) -> str:
    major_minor = ".".join(version.split(".")[:2])
    return (
        f"Use a lock made for Python {major_minor} (`provision lock PROFILE` with that Python), "
        "or create the environment with the Python the lock names (--env to a new folder)."
    )


# --- creating and syncing -----------------------------------------------------------------------


def _explain_venv_failure(request: str, root: Path, stderr: str, lock: Path) -> ProvisionError:
    lowered = stderr.lower()
    if "interpreter" in lowered or "no python" in lowered or "not found" in lowered:
        installed = installed_pythons()
        have = ", ".join(installed) if installed else "none that uv can find"
        other = installed[-1] if installed else "3.11"
        return ProvisionError(
            f"{lock.name} is for Python {request}, which is not installed here (installed: "
            f"{have}); nothing was built. uv said: {_uv_error(stderr, lines=1)}",
            f"Get Python {request}: `uv python install {request}` (uv downloads a standalone "
            "build from GitHub, or from the mirror UV_PYTHON_INSTALL_MIRROR names; provision "
            f"itself never lets uv download interpreters), or `apt install python{request}`, or "
            f"`pyenv install {request}` with it on PATH; then run the same command again. Or lock "
            f"for a Python this machine has: `provision lock PROFILE --python {other}`.",
        )
    return ProvisionError(f"uv venv {root} failed: {_uv_error(stderr)}")


def installed_pythons() -> list[str]:
    """The major.minor versions of the interpreters uv finds here (never downloading), sorted."""
    proc = run_uv(["python", "list", "--only-installed", "--output-format", "json"])
    try:
        found = json.loads(proc.stdout) if proc.returncode == 0 else []
        versions = {f"{p['version_parts']['major']}.{p['version_parts']['minor']}" for p in found}
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))


def _uv_error(stderr: str, lines: int = 8) -> str:
    """uv's error and its causes, without warnings, progress and empty lines."""
    keep = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip()
        and not line.startswith(("warning:", "Using Python", "Using CPython", "Resolved"))
        and not line.strip().startswith(_PROGRESS)
    ]
    # The error comes last: a disk that fills mid-install prints many "Downloading" lines first.
    errors = [i for i, line in enumerate(keep) if line.startswith(("error:", "Caused by:"))]
    start = errors[0] if errors else max(0, len(keep) - lines)
    text = " | ".join(keep[start : start + lines])
    return text or "no output"


# uv's progress lines: never the cause of a failure.
_PROGRESS = (
    "Downloading", "Downloaded", "Prepared", "Installed", "Uninstalled", "Audited", "Building",
    "Built", "Checked", "Using cached",
)  # fmt: skip


def _explain_sync_failure(stderr: str, data: dict[str, Any], lock_file: Path) -> ProvisionError:
    """uv's failure as one message naming the package, the file and the fix."""
    import re

    files = _package_files(data)
    hint = (
        "Copy the wheel into a folder and pass --wheelhouse DIR (or set PIP_FIND_LINKS), "
        "or run where the package index is reachable."
    )
    url = re.search(r"wasn't found in the cache: (\S+)", stderr)
    if url:
        name = _entry_filename({"url": url.group(1)}) or url.group(1)
        pkg, ver = files.get(name, ("?", "?"))
        return ProvisionError(
            f"{pkg} {ver}: {name} is in neither the wheelhouse nor uv's cache, and the network is "
            "off (offline).",
            hint,
        )
    missing = re.search(r"query metadata of file `([^`]+)`: No such file", stderr)
    if missing:
        name = Path(missing.group(1)).name
        pkg, ver = files.get(name, ("?", "?"))
        return ProvisionError(
            f"{pkg} {ver}: the lock points at {missing.group(1)}, which does not exist.", hint
        )
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return ProvisionError(
            f"The disk filled up while uv installed {lock_file}: {_uv_error(stderr, 4)}",
            "Free space where the environment and uv's cache live (UV_CACHE_DIR), or put them "
            "on a bigger disk; what was installed so far is reused on the next run.",
        )
    failed = re.search(r"Failed to (?:download|fetch) `([^`]+)`", stderr)
    if any(sign in stderr for sign in ("Hash mismatch", "but the lockfile records", "Bad CRC")):
        what = failed.group(1) if failed else "A file"
        return ProvisionError(
            f"{what} does not match the hash in {lock_file} (or is corrupt): "
            f"{_uv_error(stderr, 4)}",
            "The wheel in the wheelhouse or on the mirror was replaced or damaged; fetch it "
            "again, or re-lock if the new file is the one you want.",
        )
    if failed:
        causes = [ln.split("cause:", 1)[1].strip() for ln in stderr.splitlines() if "cause:" in ln]
        fetched = re.search(r"Failed to fetch: (\S+)", stderr)
        where = f" from {fetched.group(1)}" if fetched else ""
        why = causes[-1] if causes else _uv_error(stderr, 4)
        return ProvisionError(f"Could not download {failed.group(1)}{where}: {why}.", hint)
    return ProvisionError(f"uv pip sync of {lock_file} failed: {_uv_error(stderr)}")


def _sync_plan(python: Path, lock_file: Path) -> tuple[int, dict[str, Any], str]:
    """`uv pip sync --check`: (returncode, JSON plan, stderr); 0 = matches, 1 = would change."""
    proc = run_uv(
        ["pip", "sync", *PYLOCK, "--check", "--output-format", "json"]
        + ["--python", str(python), str(lock_file)]
    )
    try:
        plan = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        plan = {}
    return proc.returncode, plan, proc.stderr


def _changes(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    added = [
        f"{c['name']}=={c['version']}"
        for c in plan.get("changes", [])
        if c["action"] == "installed"
    ]
    gone = [
        f"{c['name']}=={c['version']}"
        for c in plan.get("changes", [])
        if c["action"] != "installed"
    ]
    return added, gone


def _sync(
    python: Path,
    lock_file: Path,
    data: dict[str, Any],
    links: list[str],
    offline: bool,
    probe: _Probe | None = None,
) -> tuple[dict[str, Any], int, list[str]]:
    """`uv pip sync` the lock (through a wheelhouse copy of it when local files serve it).

    With `probe` (a fresh env only: it is deleted on failure), uv starts installing while the fit
    probe still runs, and is stopped if the probe finds the lock does not fit.
    """
    folders = _local_folders(links)
    args = [*SYNC_ARGS, "--output-format", "json"]
    args += ["--python", str(python)]
    from provision.secrets import find_links_args

    usable = [  # pip skips a missing folder with a warning; uv would stop, so skip it
        link
        for link in links
        if "://" in link and not link.startswith("file:") or Path(link).is_dir()
    ]
    link_env: dict[str, str] = {}  # a password in a find-links URL goes to uv here, not in argv
    args += find_links_args(usable, link_env)
    if offline:
        args.append("--offline")
    with tempfile.TemporaryDirectory(prefix="provision-lock-") as tmp:
        target = lock_file
        moved = 0
        if folders:
            from provision.lock.lockfile import write_lock

            local, moved = localize_lock(data, lock_file.parent.absolute(), folders)
            if moved:
                target = Path(tmp) / "pylock.toml"  # uv accepts only pylock[.name].toml names
                write_lock(target, local)
        proc = subprocess.Popen(
            [uv_bin(), *args, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=uv_env(extra={**build_env(data), **link_env}),
            start_new_session=True,  # its own group: stopping it stops the builds it started
        )
        try:
            with exit_on_signals():
                if probe is not None:
                    _finish_probe(probe, python, lock_file)
                out, err = proc.communicate(timeout=3600)
        finally:
            if proc.poll() is None:
                stop_group(proc)  # and the builds it started; then drain its pipes
                proc.communicate()
    if proc.returncode != 0:
        raise _explain_sync_failure(err, data, lock_file)
    try:
        plan = json.loads(out) if out.strip() else {}
    except json.JSONDecodeError:
        plan = {}
    return plan, moved, [str(f) for f in folders]


def build_env(data: dict[str, Any]) -> dict[str, str]:
    """The lock's [tool.provision.env] settings for building its sdists at install (DeepSpeed's
    DS_BUILD_OPS=0), limited to the variables provision/data/sdist_metadata.toml names: a lock
    cannot set anything else (PATH, LD_PRELOAD...) in uv's environment."""
    from provision.lock.resolve import static_metadata

    allowed = {k for row in static_metadata() for k in row.get("install_env", {})}
    tool = data.get("tool", {})
    table = tool.get("provision", {}) if isinstance(tool, dict) else {}
    env = table.get("env", {}) if isinstance(table, dict) else {}
    if not isinstance(env, dict):
        return {}
    return {k: v for k, v in env.items() if k in allowed and isinstance(v, str)}


# --- flash-attn: its release wheel after the lock's packages (provision.attention) -------------

_FLASH_ATTN = "flash-attn"


def _attention_table(data: dict[str, Any]) -> dict[str, Any]:
    tool = data.get("tool", {})
    table = tool.get("provision", {}) if isinstance(tool, dict) else {}
    attention = table.get("attention", {}) if isinstance(table, dict) else {}
    return attention if isinstance(attention, dict) else {}


def _wheel_version(wheel: str) -> str:
    """flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp311-... -> 2.7.4.post1+cu12torch2.6..."""
    return wheel.split("-")[1]


def _only_the_attention_wheel(plan: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether the one difference `uv pip sync --check` finds is the flash-attn wheel that the
    lock's attention table put there (uv's lock does not list it, so sync would take it out)."""
    wheel = _attention_table(data).get("wheel")
    changes = plan.get("changes", [])
    return (
        bool(wheel)
        and bool(changes)
        and all(c.get("name") == _FLASH_ATTN and c.get("action") != "installed" for c in changes)
    )


def _has_flash_attn(python: Path, version: str) -> bool:
    """Whether the env holds flash-attn at `version` (its dist-info is there): no uv call."""
    root = python.parent.parent
    want = version.lower()
    for info in root.glob("lib/python*/site-packages/flash_attn-*.dist-info"):
        if info.name[len("flash_attn-") : -len(".dist-info")].lower() == want:
            return True
    return False


def install_attention(
    python: Path, data: dict[str, Any], links: list[str], offline: bool
) -> dict[str, Any]:
    """Put the lock's flash-attn release wheel in the environment, or say why attention falls
    back to sdpa. {} when the lock asks for no flash-attn.

    The wheel is the file the lock named: from a wheelhouse / find-links folder that holds it
    (as `--wheelhouse` serves the lock's other files), else from its release URL. It goes in
    with --no-deps (its one dependency, einops, is in the lock). A wheel that cannot be had is
    not compiled: the result says sdpa, and why."""
    attention = _attention_table(data)
    if not attention:
        return {}
    wheel, url = attention.get("wheel"), attention.get("url")
    fallback = str(attention.get("implementation") or "sdpa")
    if fallback != "flash_attention_2" or not isinstance(wheel, str) or not isinstance(url, str):
        reason = str(attention.get("reason", "the lock picked no wheel"))
        return {
            "implementation": fallback,
            "reason": reason,
            "note": f"Attention: {fallback} (the lock's fallback: {reason}).",
        }
    if not re.fullmatch(r"flash_attn-[A-Za-z0-9.+_]+-cp\d+-cp\d+-linux_x86_64\.whl", wheel):
        raise ProvisionError(
            f"The lock's [tool.provision.attention] names {wheel!r}, which is not a flash-attn "
            "wheel file name.",
            "Re-lock with provision; the attention table is written by `provision lock`.",
        )
    version = _wheel_version(wheel)
    if _has_flash_attn(python, version):
        return {"implementation": "flash_attention_2", "wheel": wheel, "action": "present"}
    local = next((f / wheel for f in _local_folders(links) if (f / wheel).is_file()), None)
    if local is None and offline:
        return _attention_fallback(wheel, "offline, and no wheelhouse folder holds it")
    source = str(local) if local else url
    proc = run_uv(
        ["pip", "install", "--no-deps", "--python", str(python), source]
        + (["--offline"] if offline else []),
        timeout=1800,
    )
    if proc.returncode != 0:
        return _attention_fallback(wheel, _uv_error(proc.stderr, 3))
    result = {
        "implementation": "flash_attention_2",
        "wheel": wheel,
        "action": "installed",
        "from": source if local else url,
        "note": f"flash-attn: installed {wheel}.",
    }
    if local:
        result["sha256"] = hashlib.sha256(local.read_bytes()).hexdigest()
    return result


def _attention_fallback(wheel: str, why: str) -> dict[str, Any]:
    reason = f"the flash-attn wheel {wheel} could not be had ({why})"
    return {
        "implementation": "sdpa",
        "reason": reason,
        "action": "fallback",
        "note": (
            f"Attention falls back to sdpa: {reason}; nothing was compiled. Put the wheel in a "
            "--wheelhouse folder to install it."
        ),
    }


def _uv_no_cache() -> bool:
    """Whether UV_NO_CACHE makes uv use a temporary cache (nothing lasting to find or prune)."""
    return os.environ.get("UV_NO_CACHE", "").lower() in ("1", "true", "yes", "on")


def _uv_cache_dir() -> Path | None:
    """uv's cache folder (UV_CACHE_DIR, else uv's answer), None when uv uses no lasting cache."""
    if _uv_no_cache():
        return None
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    try:
        proc = run_uv(["cache", "dir"], 60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = proc.stdout.strip()
    return Path(text) if proc.returncode == 0 and text else None


def unpacked_archives(cache: Path | None) -> set[str] | None:
    """The entries of uv's archive-v0 (one per unpacked wheel): one listing of one folder."""
    if cache is None:
        return None
    try:
        return set(os.listdir(cache / "archive-v0"))
    except OSError:
        return set()


def prune_needed(before: set[str] | None, after: set[str] | None) -> bool:
    """Whether the install unpacked wheels into uv's cache (the copies a prune is for): an
    install from local wheel files, or one that reused what uv had, left nothing to prune, and
    the prune's walk over the whole cache (seconds on a cache of GBs) is skipped."""
    if before is None or after is None:
        return False
    return bool(after - before)


def prune_uv_cache(wait_s: int = 10) -> str:
    """`uv cache prune` after an install; returns uv's summary ("Removed N files (X GiB)") or "".

    uv 0.13 unpacks each wheel a pylock.toml names by its PyPI URL (files.pythonhosted.org) into
    its cache again on every install and keeps no reference to that copy (seen with 0.13.9; a
    wheel by local path was not unpacked again): each environment built from a lock leaves its
    unpacked size in the cache, unreachable (GBs with PyPI's CUDA torch and nvidia-* wheels),
    and it stays after the environment is deleted. A prune removes only unreachable entries; the
    new environment keeps its files (hard links). uv waits for other uv processes using the
    cache; after `wait_s` the prune is left to the next install, as it is when it fails: that
    costs space, never the environment.
    """
    if _uv_no_cache():
        return ""  # uv used a temporary cache, gone already
    try:
        proc = run_uv(["cache", "prune"], wait_s + 300, {"UV_LOCK_TIMEOUT": str(wait_s)})
    except (OSError, subprocess.TimeoutExpired):
        return ""
    said = [line.strip() for line in proc.stderr.splitlines() if line.startswith("Removed")]
    return said[-1] if proc.returncode == 0 and said else ""


def ensure_env(
    env: str | os.PathLike[str],
    lock_file: str | os.PathLike[str],
    wheelhouse: str | os.PathLike[str] | None = None,
    *,
    python: str | None = None,
    offline: bool = False,
) -> EnvResult:
    """Make the virtual environment at `env` hold exactly `lock_file`'s packages.

    A missing env is created with the lock's Python (or `python`: "3.11" or a path); an env that
    already matches is left alone (action "unchanged"); a drifted one is synced back ("synced").
    Concurrent calls on the same env wait for each other. Bad input (an env path that is a file,
    a lock for another Python or platform, a wheel that cannot be had offline, a missing Python)
    raises ProvisionError with one message.
    """
    started = time.perf_counter()
    root = Path(env).expanduser().absolute()
    lock = Path(lock_file).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise ProvisionError(
            f"Environment path {root} is a file, not a folder.",
            "Pass --env with a folder path (it is created if missing), or move the file away.",
        )
    data = _load_lock(lock)
    links = find_links(wheelhouse)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        return now

    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"Cannot create {root.parent} for the environment: {exc.strerror}.",
            "Pass --env with a folder you can write to (e.g. on the data disk).",
        ) from exc
    # The lock file sits beside the env: uv refuses to create a venv in a non-empty folder.
    with file_lock(root.parent / f".{root.name}.provision-lock"):
        mark = time.perf_counter()
        created = False
        if is_venv(root):
            interpreter = env_python(root)
            code, plan, err = _sync_plan(interpreter, lock)
            mark = lap("check", mark)
            if code == 1 and _only_the_attention_wheel(plan, data):
                code = 0  # the lock's flash-attn wheel, put there by install_attention
            if code == 0:
                attention = install_attention(interpreter, data, links, offline)
                version, count = _env_facts(root)
                timings["total"] = time.perf_counter() - started
                return EnvResult(
                    env=root,
                    python=interpreter,
                    python_version=version,
                    lock=lock,
                    action="unchanged",
                    packages=count,
                    timings=timings,
                    attention=attention,
                )
            check_lock_fits(interpreter, data, lock)
            if code not in (0, 1):
                raise ProvisionError(f"uv could not check {root} against {lock}: {_uv_error(err)}")
        else:
            if root.is_dir() and any(root.iterdir()):
                raise ProvisionError(
                    f"{root} exists, is not empty and is not a virtual environment.",
                    "Pass --env with a new or empty folder; provision does not overwrite folders.",
                )
            requests = _python_requests(data, python)
            if not requests:
                raise ProvisionError(
                    f"{lock} does not say which Python it is for (no requires-python).",
                    "Pass the Python version (e.g. --python 3.11), or re-lock with provision.",
                )
            for request in requests:
                proc = run_uv(["venv", "--no-project", "--python", request, str(root)])
                if proc.returncode == 0:
                    break
            else:
                raise _explain_venv_failure(requests[0], root, proc.stderr, lock)
            interpreter = env_python(root)
            created = True
            mark = lap("create", mark)
        cache = _uv_cache_dir()
        archives_before = unpacked_archives(cache)
        try:
            # A fresh env is checked while uv already installs (it is removed if the lock does
            # not fit); an existing one is checked before uv touches it.
            probe = _start_probe(interpreter, data) if created else None
            plan, moved, folders = _sync(interpreter, lock, data, links, offline, probe)
        except BaseException:
            if created:  # a half-filled env we made ourselves would pass for a real one later
                shutil.rmtree(root, ignore_errors=True)
            raise
        mark = lap("sync", mark)
        code, after, err = _sync_plan(interpreter, lock)
        if code != 0:
            raise CheckFailed(
                f"{root} still differs from {lock} after the sync: "
                f"{_changes(after) if after else _uv_error(err)}",
                "Report this; remove the environment folder and run again to start clean.",
            )
        mark = lap("verify", mark)
        attention = install_attention(interpreter, data, links, offline)
        mark = lap("attention", mark)
        added, gone = _changes(plan)
        # The prune runs only when it has something to remove: packages were added and uv
        # unpacked wheels into its cache for them (see prune_uv_cache).
        unpacked = added and prune_needed(archives_before, unpacked_archives(cache))
        pruned = prune_uv_cache() if unpacked else ""
        lap("prune", mark)
    version, count = _env_facts(root)
    result = EnvResult(
        env=root,
        python=interpreter,
        python_version=version,
        lock=lock,
        action="created" if created else "synced",
        installed=added,
        removed=gone,
        packages=count,
        wheelhouse=folders,
        local_files=moved,
        timings=timings,
        cache_pruned=pruned,
        attention=attention,
    )
    result.timings["total"] = time.perf_counter() - started
    return result
