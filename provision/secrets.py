"""Credentials in URLs: the one place they are taken out of anything written or shown.

A mirror or an index URL may carry `user:password@`. That URL is what requests are made with,
and nothing else: lockfiles, rc files, Dockerfiles, messages and `--json` get the bare URL
(`public`) or a marked one (`redact`: `https://***@host`), and child processes get credentials
through their environment (uv: UV_INDEX_<NAME>_USERNAME/PASSWORD, UV_FIND_LINKS), never argv,
which every local user can read with `ps`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ anywhere in a text (an error message a client built from its URL).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return bool(parts.username or parts.password)
    except ValueError:
        return bool(_USERINFO.search(url))


def _rebuild(url: str, userinfo: str) -> str:
    """`url` with its `user:password@` replaced by `userinfo` ("" drops it)."""
    if not has_credentials(url):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # an IPv6 literal
        if parts.port:
            host += f":{parts.port}"
    except ValueError:
        return redact_text(url)
    return urlunsplit((parts.scheme, userinfo + host, parts.path, parts.query, parts.fragment))


def public(url: str) -> str:
    """The URL without its credentials: https://user:secret@host/x -> https://host/x."""
    return _rebuild(url, "")


def redact(url: str) -> str:
    """The URL with its credentials marked: https://user:secret@host/x -> https://***@host/x."""
    return _rebuild(url, "***@")


def redact_text(text: str) -> str:
    """Every `scheme://userinfo@` in a text marked as `scheme://***@`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def credentials(url: str) -> tuple[str, str] | None:
    """(user, password) a URL carries, percent-decoded; None without."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return None
    return unquote(parts.username or ""), unquote(parts.password or "")


def find_links_args(locations: list[str], env: dict[str, str]) -> list[str]:
    """uv's find-links: `--find-links X` arguments, or, when any location carries credentials,
    none at all and every location in `env["UV_FIND_LINKS"]` (comma-separated, as uv reads it;
    uv takes the variable only when no --find-links is given, hence all of them)."""
    if not any(has_credentials(loc) for loc in locations):
        return [arg for loc in locations for arg in ("--find-links", loc)]
    env["UV_FIND_LINKS"] = ",".join(locations)
    return []
