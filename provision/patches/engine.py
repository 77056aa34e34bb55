"""Applying, reverting and reporting library fixes in a target environment.

Each file a fix changes is handled under a file lock, written atomically, backed up beside itself
(`<file>.provision-orig`, the exact original bytes), and its stale bytecode is removed so the next
import compiles the new source. With a lockfile, the original and patched hashes are recorded in
`[tool.provision.fixes] files = [...]`, which is how `status` tells provision's edit from
somebody else's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_bytes, file_lock
from provision.errors import ProvisionError
from provision.patches import base
from provision.patches.base import Fix
from provision.patches.registry import all_fixes, get_fix
from provision.patches.target import Installed, inspect

PATCHED = "patched"
ORIGINAL = "original"
CHANGED = "changed"  # not a form provision knows, or changed after provision patched it
NOT_APPLICABLE = "not-applicable"
BACKUP_SUFFIX = ".provision-orig"


@dataclass
class FixResult:
    """One fix in one environment: its state, and what this call did about it."""

    fix: str
    package: str
    python: str
    version: str | None
    state: str  # patched | original | changed | not-applicable
    action: str = "none"  # none | applied | already-patched | reverted | already-original | skipped
    reason: str = ""
    file: str | None = None
    form: str | None = None
    sha256: str | None = None
    original_sha256: str | None = None
    patched_sha256: str | None = None
    backup: str | None = None
    recorded: bool = False  # the lockfile's record matches the file
    bytecode_removed: list[str] = field(default_factory=list)
    check: dict[str, Any] | None = None  # the fix's own check, when asked for

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the lockfile record ----------------------------------------------------------------------


def _records(lock_file: Path | None) -> list[dict[str, Any]]:
    if lock_file is None:
        return []
    from provision.lock.lockfile import recorded_table

    return list(recorded_table(lock_file).get("fixes", {}).get("files", []))


def _record_for(fix: Fix, version: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    for rec in records:
        if (
            rec.get("fix") == fix.id
            and rec.get("file") == fix.file
            and rec.get("version") == version
        ):
            return rec
    return None


def _store_record(
    lock_file: Path, fix: Fix, record: dict[str, Any] | None, into_lock: bool = False
) -> None:
    """Put (or, with None, drop) this fix's record; nothing is rewritten if nothing changes.
    Into the lock with `into_lock`, else this machine's record (lockfile.record)."""
    # Compare with the table the record goes into: with --lock that is the lock's own table, not
    # this machine's record of it (which can already hold the same entry and would skip the write).
    from provision.lock.lockfile import is_shipped, read_lock, tool_table
    from provision.lock.lockfile import record as record_into

    if into_lock and lock_file.exists() and not is_shipped(lock_file):
        target = list(tool_table(read_lock(lock_file)).get("fixes", {}).get("files", []))
    else:
        target = _records(lock_file)
    current = [r for r in target if r.get("fix") == fix.id and r.get("file") == fix.file]
    if (record is None and not current) or (record is not None and current == [record]):
        return

    def change(data: dict[str, Any]) -> None:
        fixes = data.setdefault("tool", {}).setdefault("provision", {}).setdefault("fixes", {})
        kept = [
            r
            for r in fixes.get("files", [])
            if not (r.get("fix") == fix.id and r.get("file") == fix.file)
        ]
        if record is not None:
            kept.append(record)
        if kept:
            fixes["files"] = kept
        else:
            fixes.pop("files", None)

    record_into(lock_file, change, into_lock=into_lock, create=False)


# --- looking at one fix in one environment ---------------------------------------------------


@dataclass
class _Seen:
    result: FixResult
    installed: Installed
    raw: bytes = b""
    text: str = ""
    detection: base.Detection | None = None
    record: dict[str, Any] | None = None


def _look(fix: Fix, python: Path, records: list[dict[str, Any]]) -> _Seen:
    installed = inspect(python, fix.package, fix.file)
    result = FixResult(
        fix=fix.id, package=fix.package, python=str(python), version=installed.version, state=""
    )
    seen = _Seen(result, installed)
    if installed.version is None:
        result.state, result.reason = NOT_APPLICABLE, f"{fix.package} is not installed in {python}"
        return seen
    applies, why = fix.applies_to(installed.version)
    if not applies:
        result.state, result.reason = NOT_APPLICABLE, why
        return seen
    path = installed.file
    if path is None or not path.is_file():
        result.state = CHANGED
        result.reason = f"{fix.file} is missing from {fix.package} {installed.version}"
        return seen
    result.file = str(path)
    seen.raw = path.read_bytes()
    try:
        seen.text = seen.raw.decode("utf-8")
    except UnicodeDecodeError:
        result.state, result.reason = CHANGED, f"{path} is not UTF-8 text"
        return seen
    result.sha256 = sha256_bytes(seen.raw)
    backup = _backup_path(path)
    result.backup = str(backup) if backup.exists() else None
    detection = fix.detect(seen.text)
    seen.detection = detection
    result.form = detection.form
    seen.record = _record_for(fix, installed.version, records)
    if seen.record:
        result.original_sha256 = seen.record.get("original_sha256")
        result.patched_sha256 = seen.record.get("patched_sha256")

    if detection.state == base.ORIGINAL:
        result.state = ORIGINAL
        result.original_sha256 = result.original_sha256 or result.sha256
        if seen.record and result.sha256 != seen.record.get("original_sha256"):
            result.state = CHANGED
            result.reason = (
                "the file is not the original the lockfile recorded for this version "
                f"(sha256 {result.sha256[:12]}, recorded {str(result.original_sha256)[:12]})"
            )
        else:
            result.reason = f"{fix.package} {installed.version} has the bug; the fix is not applied"
            result.patched_sha256 = sha256_bytes(fix.apply_text(seen.text).encode("utf-8"))
            result.recorded = seen.record is not None
    elif detection.state == base.PATCHED:
        expected = seen.record.get("patched_sha256") if seen.record else None
        if expected is None and backup.exists():
            original = backup.read_bytes().decode("utf-8")
            if fix.detect(original).state == base.ORIGINAL:
                expected = sha256_bytes(fix.apply_text(original).encode("utf-8"))
                result.original_sha256 = sha256_bytes(backup.read_bytes())
        if expected is None or expected == result.sha256:
            result.state = PATCHED
            result.recorded = seen.record is not None
            result.patched_sha256 = result.sha256
            result.reason = "provision's fix is in place" + (
                " (matches the lockfile's record)" if seen.record else ""
            )
        else:
            result.state = CHANGED
            result.reason = (
                "provision's edit is there, but the file was changed after it "
                f"(sha256 {result.sha256[:12]}, expected {expected[:12]})"
            )
    else:
        result.state = CHANGED
        result.reason = "; ".join(detection.problems)
    return seen


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.provision-lock")


def _drop_bytecode(path: Path) -> list[str]:
    """Remove the file's cached bytecode (every interpreter tag and optimisation level).

    Python revalidates bytecode against the source's mtime and size, but not hash-based or
    unchecked .pyc files, and an edit within the same second and size would pass; so the cache
    goes, beside the file and under PYTHONPYCACHEPREFIX (which mirrors the source tree).
    """
    removed = []
    caches = [path.parent / "__pycache__"]
    prefix = os.environ.get("PYTHONPYCACHEPREFIX")
    if prefix:
        caches.append(Path(prefix) / str(path.parent.absolute()).lstrip(os.sep))
    candidates = [
        pyc for cache in caches if cache.is_dir() for pyc in cache.glob(f"{path.stem}.*.pyc")
    ]
    legacy = path.with_suffix(".pyc")
    if legacy.exists():
        candidates.append(legacy)
    for pyc in candidates:
        try:
            pyc.unlink()
            removed.append(str(pyc))
        except FileNotFoundError:
            pass
    return removed


def _refusal(fix: Fix, seen: _Seen, doing: str) -> ProvisionError:
    result = seen.result
    expected = "; ".join(f"{f.name} (seen in {f.seen_in})" for f in fix.forms)
    return ProvisionError(
        f"Refusing to {doing} {fix.id}: {result.file or fix.file} ({fix.package} "
        f"{result.version}) does not match what the fix expects in {fix.region_name}: "
        f"{result.reason}. Expected one statement `{fix.original}` in one of the known forms: "
        f"{expected}.",
        f"Reinstall {fix.package}=={result.version} to get the released file back (e.g. "
        f"`uv pip install --reinstall-package {fix.package} ...` or `provision setup`), then run "
        "`provision patch apply` again.",
    )


def _record(fix: Fix, seen: _Seen, original: bytes, patched: bytes) -> dict[str, Any]:
    assert seen.installed.version is not None and seen.detection is not None
    return {
        "fix": fix.id,
        "package": fix.package,
        "version": seen.installed.version,
        "file": fix.file,
        "form": seen.detection.form or "",
        "original_sha256": sha256_bytes(original),
        "patched_sha256": sha256_bytes(patched),
    }


# --- the three operations ----------------------------------------------------------------------


def _writable(path: Path, doing: str) -> ProvisionError:
    return ProvisionError(
        f"Cannot {doing} {path}: permission denied.",
        "Run provision as the user who owns the environment (or fix the folder's permissions).",
    )


def _apply_one(
    fix: Fix, python: Path, lock_file: Path | None, into_lock: bool = False
) -> FixResult:
    try:
        return _apply_locked(fix, python, lock_file, into_lock)
    except PermissionError as exc:
        raise _writable(Path(exc.filename or fix.file), "patch") from exc


def _revert_one(
    fix: Fix, python: Path, lock_file: Path | None, into_lock: bool = False
) -> FixResult:
    try:
        return _revert_locked(fix, python, lock_file, into_lock)
    except PermissionError as exc:
        raise _writable(Path(exc.filename or fix.file), "restore") from exc


def _apply_locked(
    fix: Fix, python: Path, lock_file: Path | None, into_lock: bool = False
) -> FixResult:
    records = _records(lock_file)
    seen = _look(fix, python, records)
    result = seen.result
    if result.state == NOT_APPLICABLE:
        result.action = "skipped"
        return result
    assert seen.installed.file is not None
    path = seen.installed.file
    with file_lock(_lock_path(path)):
        seen = _look(fix, python, records)  # again, under the lock: another process may have won
        result = seen.result
        if result.state == CHANGED:
            raise _refusal(fix, seen, "apply")
        backup = _backup_path(path)
        if result.state == PATCHED:
            result.action = "already-patched"
            original = backup.read_bytes() if backup.exists() else None
            if original is None:
                original = fix.revert_text(seen.text).encode("utf-8")
        else:
            patched_text = fix.apply_text(seen.text)
            if fix.detect(patched_text).state != base.PATCHED:  # never write what we can't read
                raise ProvisionError(f"{fix.id}: the patched {path} would not be recognised.")
            original = seen.raw
            patched = patched_text.encode("utf-8")
            mode = path.stat().st_mode & 0o7777
            atomic_write_bytes(backup, original, mode=mode)
            atomic_write_bytes(path, patched, mode=mode)
            result.bytecode_removed = _drop_bytecode(path)
            result.action = "applied"
            result.state = PATCHED
            result.reason = "provision's fix is in place"
            result.sha256 = sha256_bytes(patched)
            result.backup = str(backup)
        current = path.read_bytes()
        result.original_sha256 = sha256_bytes(original)
        result.patched_sha256 = sha256_bytes(current)
        if lock_file is not None:
            _store_record(lock_file, fix, _record(fix, seen, original, current), into_lock)
            result.recorded = True
    return result


def _revert_locked(
    fix: Fix, python: Path, lock_file: Path | None, into_lock: bool = False
) -> FixResult:
    records = _records(lock_file)
    seen = _look(fix, python, records)
    if seen.result.state == NOT_APPLICABLE:
        seen.result.action = "skipped"
        return seen.result
    assert seen.installed.file is not None
    path = seen.installed.file
    with file_lock(_lock_path(path)):
        seen = _look(fix, python, records)
        result = seen.result
        backup = _backup_path(path)
        if result.state == CHANGED:
            raise _refusal(fix, seen, "revert")
        if result.state == ORIGINAL:
            result.action = "already-original"
            if backup.exists() and backup.read_bytes() == seen.raw:
                backup.unlink()  # a leftover from an earlier patch of this very file
                result.backup = None
        else:
            restored = None
            if backup.exists():
                candidate = backup.read_bytes()
                if fix.apply_text(candidate.decode("utf-8")) == seen.text:
                    restored = candidate
            if restored is None:  # no usable backup: undo the one statement, marker and all
                restored = fix.revert_text(seen.text).encode("utf-8")
            expected = seen.record.get("original_sha256") if seen.record else None
            if expected and sha256_bytes(restored) != expected:
                raise ProvisionError(
                    f"Reverting {fix.id} in {path} would not give back the original the lockfile "
                    f"recorded (sha256 {expected[:12]}).",
                    f"Reinstall {fix.package}=={result.version} to get the released file back.",
                )
            atomic_write_bytes(path, restored, mode=path.stat().st_mode & 0o7777)
            result.bytecode_removed = _drop_bytecode(path)
            if backup.exists():
                backup.unlink()
            result.action = "reverted"
            result.state = ORIGINAL
            result.reason = "the released file is back"
            result.sha256 = sha256_bytes(restored)
            result.original_sha256 = result.sha256
            result.backup = None
        if lock_file is not None:
            _store_record(lock_file, fix, None, into_lock)
        result.recorded = False
    return result


def verify(fix: Fix, python: Path, timeout: float = 900) -> dict[str, Any]:
    """Run the fix's own check with the environment's Python; {"ok": bool, ...}."""
    if not fix.check_script:
        return {"ok": None, "error": "this fix has no check"}
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", fix.check_script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the check did not finish in {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": (proc.stderr.strip() or proc.stdout.strip())[-600:]}
    return json.loads(lines[-1])


def _selected(fix_ids: list[str] | None, lock_file: Path | None) -> list[Fix]:
    if fix_ids:
        return [get_fix(i) for i in fix_ids]
    if lock_file is not None:
        from provision.lock.lockfile import read_lock, tool_table

        wanted = tool_table(read_lock(lock_file)).get("fixes", {}).get("apply")
        if wanted is not None:
            return [get_fix(i) for i in wanted]
    return all_fixes()


def fix_status(
    python: Path,
    fix_ids: list[str] | None = None,
    lock_file: Path | None = None,
    verify_fixes: bool = False,
) -> list[FixResult]:
    """The state of each fix (all known ones, or the lock's list, when `fix_ids` is empty)."""
    lock = Path(lock_file) if lock_file else None
    records = _records(lock)
    out = []
    for fix in _selected(fix_ids, lock):
        result = _look(fix, Path(python), records).result
        if verify_fixes and result.state != NOT_APPLICABLE:
            result.check = verify(fix, Path(python))
        out.append(result)
    return out


def apply_fixes(
    python: Path,
    fix_ids: list[str] | None,
    lock_file: Path | None = None,
    verify_fixes: bool = False,
    into_lock: bool = False,
) -> list[FixResult]:
    """Apply each fix (idempotent); record the hashes for `lock_file` when given (into it with
    `into_lock`, else this machine's record: lockfile.record).

    A file that matches no known form raises ProvisionError naming the file, version and what was
    expected; fixes before it stay applied (each is complete on its own).
    """
    lock = Path(lock_file) if lock_file else None
    out = []
    for fix in _selected(fix_ids, lock):
        result = _apply_one(fix, Path(python), lock, into_lock)
        if verify_fixes and result.state == PATCHED:
            result.check = verify(fix, Path(python))
        out.append(result)
    return out


def revert_fixes(
    python: Path,
    fix_ids: list[str] | None,
    lock_file: Path | None = None,
    into_lock: bool = False,
) -> list[FixResult]:
    """Put back the released files, byte for byte, and drop the lockfile's records."""
    lock = Path(lock_file) if lock_file else None
    return [_revert_one(fix, Path(python), lock, into_lock) for fix in _selected(fix_ids, lock)]
