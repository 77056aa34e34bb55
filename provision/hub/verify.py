"""`verify_profile`: re-hash the weights on disk against what the lockfile recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.hub import stamps
from provision.hub.cache import HfCache, ModelScopeCache
from provision.hub.download import _kind_of, model_record
from provision.profiles import Profile


@dataclass
class FileCheck:
    path: str
    status: str  # ok, unverified (matches, but the source gave no hash), missing, size, sha256
    size: int
    sha256: str
    actual_size: int | None = None
    actual_sha256: str | None = None
    location: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "size": self.size,
            "sha256": self.sha256,
            "actual_size": self.actual_size,
            "actual_sha256": self.actual_sha256,
            "location": self.location,
        }


@dataclass
class VerifyResult:
    profile: str
    lock_file: Path
    repo_id: str
    source: str
    revision: str
    commit: str | None
    snapshot: Path
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every file is the one recorded (unverified ones too: their bytes match the lock)."""
        return all(c.status in ("ok", "unverified") for c in self.checks)

    @property
    def problems(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status not in ("ok", "unverified")]

    @property
    def unverified(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status == "unverified"]

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "ok": self.ok,
            "lock_file": str(self.lock_file),
            "repo_id": self.repo_id,
            "source": self.source,
            "revision": self.revision,
            "commit": self.commit,
            "snapshot": str(self.snapshot),
            "files": len(self.checks),
            "bytes": sum(c.size for c in self.checks),
            "missing": [c.path for c in self.checks if c.status == "missing"],
            "wrong": [c.path for c in self.checks if c.status in ("size", "sha256")],
            "unverified": [c.path for c in self.unverified],
            "checks": [c.to_json() for c in self.checks],
        }


def verify_profile(
    profile: Profile,
    lock_file: Path | str | None = None,
    *,
    hf_cache: Path | None = None,
    ms_cache: Path | None = None,
    record_under: tuple[str, ...] | None = None,
    hashes: bool = True,
) -> VerifyResult:
    """Check every file the lock records: present, right size, right sha256 (read in full).

    `hashes=False` is the cheap check a re-run of setup makes before it trusts a download it
    finished earlier: a file unchanged (size and mtime) since provision stamped it with the
    recorded sha256 passes unread; any other file is hashed in full (see stamps.py)."""
    from provision.lock.lockfile import find_lock, member_path

    lock = Path(lock_file) if lock_file else find_lock(profile.name)
    if not lock.exists():
        raise ProvisionError(
            f"Lockfile {lock} does not exist.",
            f"Run `provision download {profile.name}` first, or pass --lock FILE.",
        )
    if record_under is None:
        record_under = member_path(lock, profile.name)
    record = model_record(lock, record_under)
    if record is None or not record.get("files"):
        raise ProvisionError(
            f"{lock} records no model files.",
            f"Run `provision download {profile.name}` to fetch and record them.",
        )
    return verify_record(
        profile.name, lock, record, hf_cache=hf_cache, ms_cache=ms_cache, hashes=hashes
    )


def verify_record(
    name: str,
    lock: Path,
    record: dict[str, Any],
    *,
    hf_cache: Path | None = None,
    ms_cache: Path | None = None,
    hashes: bool = True,
    repo_type: str = "model",
) -> VerifyResult:
    """Check the files one download record lists (a model's, or a dataset's with `repo_type`
    "dataset") in the cache they went to."""
    from provision.settings import hf_hub_cache, modelscope_cache

    repo_id = record["repo_id"]
    kind = _kind_of(record)
    revision = str(record.get("revision") or "")
    commit = record.get("commit")
    if kind == "modelscope":
        ms = ModelScopeCache(Path(ms_cache) if ms_cache else modelscope_cache(), repo_id, repo_type)
        snapshot = ms.snapshot(revision or "master")
        root = ms.cache

        def locate(path: str) -> Path:
            return ms.file(revision or "master", path)
    else:
        if not commit:
            raise ProvisionError(f"{lock}: the {repo_type} record of {repo_id} has no commit.")
        hf = HfCache(Path(hf_cache) if hf_cache else hf_hub_cache(), repo_id, repo_type)
        snapshot = hf.snapshot(commit)
        root = hf.cache

        def locate(path: str) -> Path:
            return hf.pointer(commit, path)

    result = VerifyResult(
        name, lock, repo_id, str(record.get("source")), revision, commit, snapshot
    )
    for entry in record["files"]:
        path, size, sha = entry["path"], int(entry["size"]), entry["sha256"]
        check = FileCheck(path, "ok", size, sha)
        try:
            where = locate(path)
        except ValueError:
            check.status = "missing"  # a recorded name that would leave the snapshot
            result.checks.append(check)
            continue
        check.location = str(where)
        if not where.is_file():  # also a dangling snapshot link whose blob is gone
            check.status = "missing"
        else:
            check.actual_size = where.stat().st_size
            if check.actual_size != size:
                check.status = "size"
            elif hashes or not stamps.trusted(root, where, sha):
                check.actual_sha256 = stamps.hash_and_record(root, where)
                if check.actual_sha256 != sha:
                    check.status = "sha256"
        if check.status == "ok" and entry.get("unverified"):
            check.status = "unverified"
        result.checks.append(check)
    return result
