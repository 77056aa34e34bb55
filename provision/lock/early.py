"""A re-lock starts uv as soon as its command line is read (issue 17).

`provision lock ARGS` spends ~40-60 ms importing the lock modules and computing uv's input, and
only then starts uv, whose resolution is most of the lock's time. Run again with the same
arguments in the same folder (the usual re-lock), the input is almost always the one of the last
run. So provision/cli/quick.py, once it has read the command line and before importing anything
heavy, looks for the input the last `provision lock ARGS` here gave uv
(`<cache>/provision/lock-starts/`), and starts uv on it at once. The lock then computes the input
as always: `claim()` adopts the running uv only when its binary, arguments, project file,
previous lock and environment are exactly those, and stops it otherwise (and starts uv afresh).
What is locked never depends on the guess.

The path to that uv imports as little as it can (no dataclasses, pathlib or typing: ~10 ms here),
so this module's types are for the reader only.

Nothing secret is stored: an input whose indexes carry credentials (they go to uv through the
environment) is not saved, nor is one with a URL that `redact_text` would change; the
environment is compared in memory only. A stored entry is checked for its shape before use.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import
if TYPE_CHECKING:
    from typing import Any

# Where a stored start lives: $XDG_CACHE_HOME (else ~/.cache)/provision/lock-starts/<key>.json
FOLDER = ("provision", "lock-starts")


class EarlyStart:
    """A uv started from a stored input, not yet claimed by the lock. (A plain class, as is all
    of this module's path to uv: dataclasses and pathlib would add 10 ms before uv starts.)"""

    def __init__(self, args: list[str], entry: dict[str, Any] | None) -> None:
        self.args = args
        self.entry = entry  # the stored input (None: nothing stored for these args)
        self.process: subprocess.Popen[str] | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.env: dict[str, str] | None = None
        self.started = 0.0
        self.previous: tuple[int, int, int] | None = None  # the previous lock given, as it was

    def close(self) -> None:
        """Stop uv if nobody claimed it, and remove its folder (idempotent)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.communicate()
            self.process = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


# The one pending start of this process: set by start(), taken by claim() or close().
_current: EarlyStart | None = None


def _cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, *FOLDER)


def _key(args: list[str]) -> tuple[str, str]:
    """The entry's file name for these arguments in this folder, and the text it is made of."""
    text = json.dumps([os.getcwd(), args])
    return f"{zlib.crc32(text.encode('utf-8')):08x}-{len(text)}", text


# The arguments resolve.compile_command gives uv, and nothing else: flag -> the values it may take
# (None: any). uv writes into its own temporary folder only, reads no configuration file, and the
# only interpreter it may run is this one.
_FLAGS = {"--generate-hashes": (), "--no-config": (), "--no-header": ()}
_VALUED: dict[str, tuple[str, ...] | None] = {
    "--format": ("pylock.toml",),
    "--python-version": None,
    "--python-platform": None,
    "--index-strategy": ("first-index", "unsafe-best-match"),
    "--output-file": ("pylock.toml",),
    "--index": None,
    "--default-index": None,
    "--find-links": None,
    "--python": None,  # sys.executable, checked below
}


def _valid_command(command: Any) -> bool:
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        return False
    if command[:3] != ["pip", "compile", "pyproject.toml"] or "--no-config" not in command:
        return False
    rest = command[3:]
    outputs = 0
    while rest:
        flag = rest.pop(0)
        if flag in _FLAGS:
            continue
        if flag not in _VALUED or not rest:
            return False
        value = rest.pop(0)
        allowed = (sys.executable,) if flag == "--python" else _VALUED[flag]
        if allowed is not None and value not in allowed:
            return False
        outputs += flag == "--output-file"
    return outputs == 1


def _valid(entry: Any, text: str) -> bool:
    """An entry as save() writes it, for exactly these arguments (anything else is ignored).

    The stored input is trusted as uv's own cache beside it is (a person who can write here can
    also put wheels in uv's cache): this check keeps a damaged or foreign entry from running uv
    otherwise than provision does; it does not keep out an index someone else chose."""
    return (
        isinstance(entry, dict)
        and entry.get("key") == text
        and isinstance(entry.get("pyproject"), str)
        and _valid_command(entry.get("command"))
        and (entry.get("previous") is None or isinstance(entry.get("previous"), str))
    )


def start(args: list[str]) -> None:
    """Start uv on the input stored for `provision ARGS` here, if any; remember the attempt
    (claim() saves the real input for next time). Never raises: a guess that cannot be made is
    no guess."""
    global _current
    close()
    try:
        name, text = _key(args)
        early = EarlyStart(list(args), None)
        _current = early
        try:
            with open(os.path.join(_cache_root(), f"{name}.json"), encoding="utf-8") as handle:
                entry = json.load(handle)
        except (OSError, UnicodeDecodeError, ValueError):
            return
        if not _valid(entry, text):
            return
        early.entry = entry
        from provision.uv import uv_bin, uv_env

        early.env = uv_env(scrub=True)
        early.tmp = tempfile.TemporaryDirectory(prefix="provision-resolve-")
        with open(os.path.join(early.tmp.name, "pyproject.toml"), "w", encoding="utf-8") as out:
            out.write(entry["pyproject"])
        previous = entry.get("previous")
        if previous and os.path.isfile(previous):
            import shutil

            early.previous = stamp(previous)
            shutil.copyfile(previous, os.path.join(early.tmp.name, "pylock.toml"))
        early.started = time.perf_counter()
        early.process = subprocess.Popen(
            [uv_bin(), *entry["command"]],
            cwd=early.tmp.name,
            env=early.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except Exception:  # noqa: BLE001 - a failed guess only loses the head start
        close()


def close() -> None:
    """Stop and forget the pending start, if any (main() calls it as the process ends)."""
    global _current
    early, _current = _current, None
    if early is not None:
        early.close()


def stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


# The input claim() found new, written by save() once the real uv runs (off the critical path).
_unsaved: tuple[list[str], dict[str, Any] | None] | None = None  # None: remove the stored one


def claim(
    binary: str,
    command: list[str],
    pyproject: str,
    env: dict[str, str],
    previous: str | None,
    saveable: bool,
) -> EarlyStart | None:
    """The pending start when it runs exactly this resolution (the caller then owns its process
    and folder), else None after stopping it. `previous` is where the previous lock uv is given
    would be (None: none, as with --upgrade); it may not exist. When `saveable` (no credentials)
    and the input differs from what was stored, save() stores it for the next run of the same
    arguments; when not `saveable`, it removes what was stored for them."""
    global _current, _unsaved
    early, _current = _current, None
    if early is None:
        return None
    wanted = {"pyproject": pyproject, "command": command, "previous": previous}
    entry = early.entry or {}
    same = (
        early.process is not None
        and entry.get("pyproject") == pyproject
        and entry.get("command") == command
        and entry.get("previous") == previous
        and early.env == env
        and early.process.args[0] == binary  # type: ignore[index]
        # the previous lock uv was given is the one there now, unchanged (or none, as then)
        and (previous is None or early.previous == stamp(previous))
    )
    if not same:
        early.close()
    if not saveable and early.entry is not None:
        _unsaved = (early.args, None)  # an input with credentials: forget the stored one
    elif saveable and {k: entry.get(k) for k in wanted} != wanted:
        _unsaved = (early.args, wanted)
    return early if same else None


def save() -> None:
    """Store the input claim() found new, for the next `provision ARGS` here (atomically; a
    failure is ignored: the next run only starts uv later)."""
    global _unsaved
    if _unsaved is None:
        return
    (args, wanted), _unsaved = _unsaved, None
    name, text = _key(args)
    path = os.path.join(_cache_root(), f"{name}.json")
    if wanted is None:  # not stored: it would only start a uv that is stopped again
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    from provision.secrets import redact_text

    doc = json.dumps({"key": text, **wanted}, indent=1)
    if redact_text(doc) != doc:  # a URL with credentials: never on disk
        return
    try:
        from provision.atomic import atomic_write_text

        os.makedirs(_cache_root(), mode=0o700, exist_ok=True)
        atomic_write_text(path, doc, durable=False)
    except OSError:
        pass
