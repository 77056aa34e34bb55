"""The package indexes a lock resolves against: the user's pip configuration, read as pip reads it.

uv ignores pip.conf and PIP_* variables, but that is where users of rented GPU boxes keep their
PyPI mirror, so provision reads them (same files, same precedence as pip) and hands them to uv
explicitly, and the lock says which indexes were used and where each came from.

pip's order, later wins: global files (/etc/xdg/pip/pip.conf, /etc/pip.conf), user files
(~/.pip/pip.conf, ~/.config/pip/pip.conf; skipped when PIP_CONFIG_FILE names an existing file),
the site file ($VIRTUAL_ENV/pip.conf), PIP_CONFIG_FILE, then PIP_* variables. Within a file,
[install] overrides [global]. PIP_CONFIG_FILE=/dev/null turns every file off.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.secrets import redact as _redact

PYPI_URL = "https://pypi.org/simple"
_KEYS = ("index-url", "extra-index-url", "find-links", "no-index")


@dataclass(frozen=True)
class Index:
    """One index as uv will be told about it. `url` may hold credentials: never write it."""

    name: str
    url: str
    origin: str  # where it came from: "default", "/etc/pip.conf", "PIP_EXTRA_INDEX_URL", ...
    format: str = "simple"
    explicit: bool = False

    @property
    def public_url(self) -> str:
        return redact(self.url)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.public_url, "from": self.origin}


@dataclass
class IndexConfig:
    """The default index, the extra indexes and the find-links locations, with their origins."""

    default: Index
    extras: list[Index] = field(default_factory=list)
    find_links: list[tuple[str, str]] = field(default_factory=list)  # (location, origin)
    files: list[str] = field(default_factory=list)  # pip config files that were read
    no_index: bool = False

    @property
    def strategy(self) -> str:
        # pip takes the best version across all its indexes; uv by default stops at the first
        # index that has the package. Extra indexes from pip's config mean pip's behaviour.
        return "unsafe-best-match" if self.extras or self.find_links else "first-index"

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default.public_url,
            "default_from": self.default.origin,
            "extra": [i.to_json() for i in self.extras],
            "find_links": [{"location": redact(loc), "from": o} for loc, o in self.find_links],
            "pip_config_files": list(self.files),
            "strategy": self.strategy,
        }


redact = _redact  # https://user:secret@host/simple -> https://***@host/simple (provision.secrets)


def pip_config_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The pip configuration files pip would read, in pip's order (later wins)."""
    environ = os.environ if env is None else env
    explicit = environ.get("PIP_CONFIG_FILE")
    if explicit == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs if d] + [Path("/etc/pip.conf")]
    home = Path(environ.get("HOME", str(Path.home())))
    if not (explicit and Path(explicit).exists()):
        xdg_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        files += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    venv = environ.get("VIRTUAL_ENV")
    if venv:
        files.append(Path(venv) / "pip.conf")
    if explicit:
        files.append(Path(explicit))
    return files


def _split(value: str) -> list[str]:
    return [v for v in re.split(r"\s+", value.strip()) if v]


def _read_file(path: Path) -> dict[str, str]:
    import configparser

    parser = configparser.RawConfigParser()
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except (configparser.Error, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProvisionError(
            f"pip configuration {path} is malformed: {reason}",
            "Fix the file (pip would fail on it too), or set PIP_CONFIG_FILE=/dev/null to "
            "ignore pip's configuration, or pass --ignore-pip-config.",
        ) from exc
    values: dict[str, str] = {}
    for section in ("global", "install"):  # [install] overrides [global], as in pip install
        if parser.has_section(section):
            for key in _KEYS:
                if parser.has_option(section, key):
                    values[key] = parser.get(section, key)
    return values


def _find_link(location: str) -> str:
    """pip resolves relative paths against the working folder; uv runs elsewhere: make them
    absolute."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        return location
    return str(Path(location).expanduser().absolute())


def read_pip_config(env: Mapping[str, str] | None = None) -> IndexConfig:
    """The indexes pip would use on this machine, each with the file or variable it came from."""
    environ = os.environ if env is None else env
    settings: dict[str, tuple[str, str]] = {}  # key -> (value, origin)
    read: list[str] = []
    for path in pip_config_files(environ):
        if not path.is_file():
            continue
        read.append(str(path))
        for key, value in _read_file(path).items():
            settings[key] = (value, str(path))
    for key in _KEYS:
        var = "PIP_" + key.upper().replace("-", "_")
        if environ.get(var):
            settings[key] = (environ[var], var)

    no_index = settings.get("no-index", ("", ""))[0].strip().lower() in ("1", "true", "yes", "on")
    if "index-url" in settings:
        value, origin = settings["index-url"]
        default = Index("default", value.strip(), origin)
    else:
        default = Index("default", PYPI_URL, "pip's default (PyPI)")
    extras = []
    if "extra-index-url" in settings:
        value, origin = settings["extra-index-url"]
        for number, url in enumerate(_split(value), start=1):
            extras.append(Index(f"extra-{number}", url, origin))
    find_links = []
    if "find-links" in settings:
        value, origin = settings["find-links"]
        find_links = [(_find_link(loc), origin) for loc in _split(value)]
    return IndexConfig(default, extras, find_links, read, no_index)


def pypi_only() -> IndexConfig:
    """PyPI and nothing else: what the committed built-in lockfiles are resolved against."""
    return IndexConfig(Index("default", PYPI_URL, "PyPI (pip configuration ignored)"))


def index_config(use_pip_config: bool = True, env: Mapping[str, str] | None = None) -> IndexConfig:
    config = read_pip_config(env) if use_pip_config else pypi_only()
    if config.no_index:
        raise ProvisionError(
            "pip is configured with no-index: there is no index to resolve against.",
            "Remove no-index from pip's configuration (or PIP_NO_INDEX), or pass "
            "--ignore-pip-config to resolve against PyPI.",
        )
    return config
