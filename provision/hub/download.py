"""`download_profile`: a profile's weights, from the source that answers, into the caches, recorded.

The steps: pick the source (`auto` probes them concurrently), list the repository through its
client, plan what is missing from the cache, check the disk has room, fetch the missing files in
parallel (resumable, verified, see transfer.py), place them in the client's own cache layout, and
record the commit and every file's size and sha256 in the profile's lockfile. When a lockfile
already pins a commit, that commit is what is fetched, and its hashes are what is checked.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from provision.digest import file_sha256
from provision.errors import ProvisionError
from provision.hardware.disks import nearest_existing, require_usable
from provision.hub import stamps
from provision.hub.cache import HfCache, ModelScopeCache, check_revision
from provision.hub.errors import SourceFailed, disk_full
from provision.hub.listing import (
    COMMIT_RE,
    Listing,
    RemoteFile,
    hf_listing,
    hf_token,
    local_listing,
    modelscope_listing,
    modelscope_token,
    select,
)
from provision.hub.progress import Progress, make_progress
from provision.hub.sources import Choice, Source, auto_candidates, choose_source, parse_source
from provision.hub.transfer import Fetcher, Job, Outcome, run_jobs
from provision.profiles import Profile
from provision.variables import env_value

WORKERS_ENV = "PROVISION_DOWNLOAD_WORKERS"


@dataclass
class FileRecord:
    path: str
    size: int
    sha256: str
    # The source gave no hash to check the bytes against (a ModelScope listing without Sha256):
    # `sha256` is only what arrived, and verify says "unverified", not "ok".
    unverified: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.unverified:
            out["unverified"] = True
        return out


@dataclass
class DownloadResult:
    profile: str
    source: Source
    reason: str  # why this source
    repo_id: str
    revision: str
    commit: str | None
    files: list[FileRecord]
    bytes_fetched: int  # came over the network this run (re-fetches included)
    bytes_reused: int  # already on disk: whole files, and the kept part of partial files
    files_fetched: int
    files_reused: int
    cache_dir: Path  # HF_HUB_CACHE or MODELSCOPE_CACHE
    snapshot: Path  # the folder holding the files (what from_pretrained reads)
    lock_file: Path | None = None
    record_file: Path | None = None  # where the record went: the lock, or this machine's record
    seconds: float = 0.0
    probes: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)  # sources that failed first
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repo_type: str = "model"  # or "dataset" (provision.hub.datasets)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def record(self) -> dict[str, Any]:
        """The lockfile's `[tool.provision.model]`: portable (no local paths), nothing secret."""
        out: dict[str, Any] = {
            "source": self.source.name,
            "repo_id": self.repo_id,
            "revision": self.revision,
        }
        if self.source.kind != "local":
            out["endpoint"] = self.source.endpoint
        if self.commit:
            out["commit"] = self.commit
        if self.include:
            out["include"] = list(self.include)
        if self.exclude:
            out["exclude"] = list(self.exclude)
        out["files"] = [f.to_json() for f in self.files]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "repo_type": self.repo_type,
            "source": self.source.name,
            "endpoint": self.source.endpoint,
            "kind": self.source.kind,
            "reason": self.reason,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "files": [f.to_json() for f in self.files],
            "total_bytes": self.total_bytes,
            "bytes_fetched": self.bytes_fetched,
            "bytes_reused": self.bytes_reused,
            "files_fetched": self.files_fetched,
            "files_reused": self.files_reused,
            "cache_dir": str(self.cache_dir),
            "snapshot": str(self.snapshot),
            "lock_file": str(self.lock_file) if self.lock_file else None,
            "record_file": str(self.record_file) if self.record_file else None,
            "seconds": round(self.seconds, 3),
            "probes": self.probes,
            "fallbacks": self.fallbacks,
            "notes": self.notes,
        }


# --- the lock's record ---------------------------------------------------------------------------


def model_record(lock_file: Path, record_under: Sequence[str] = ()) -> dict[str, Any] | None:
    """`[tool.provision.model]` of a lockfile (`[tool.provision.<record_under...>.model]`: one
    member's in a direction's shared lock), or None when the file or the section is absent."""
    from provision.lock.lockfile import recorded_table

    if not Path(lock_file).exists():
        return None
    table: Any = recorded_table(lock_file)
    for part in record_under:
        table = table.get(part, {}) if isinstance(table, dict) else {}
    record = table.get("model") if isinstance(table, dict) else None
    return record if isinstance(record, dict) and record.get("repo_id") else None


def checked_pin(lock: Path, section: str, pinned: dict[str, Any] | None) -> dict[str, Any] | None:
    """`pinned` (a model or dataset record of `lock`, `[tool.provision.<section>]`) when its
    names and file list can be used; one message before any transfer otherwise. The lock's own
    shapes are checked as it is read (lock/shape.py); this machine's record copy is not."""
    if pinned is None:
        return None
    fix = "Fix or remove that record, or pass --revision to record a new one."
    for name in ("revision", "commit"):  # names in the cache: refused before any transfer
        if name in pinned:
            if not isinstance(pinned[name], str) or not pinned[name]:
                raise ProvisionError(
                    f"{lock}: [tool.provision.{section}] {name} is not a name.", fix
                )
            check_revision(pinned[name])
    files = pinned.get("files", [])
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("path"), str) for f in files
    ):
        raise ProvisionError(
            f"{lock}: [tool.provision.{section}] files is not a list of file records.", fix
        )
    return pinned


def _kind_of(record: dict[str, Any]) -> str:
    name = str(record.get("source", ""))
    if name == "modelscope" or name.startswith("modelscope:"):
        return "modelscope"
    return "local" if name == "local" else "hf"


def _patterns(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for item in value:
        out.extend(p.strip() for p in item.split(",") if p.strip())
    return out


# --- the entry point -----------------------------------------------------------------------------


def download_profile(
    profile: Profile,
    source: str = "auto",
    revision: str | None = None,
    include: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    lock_file: Path | str | None = None,
    progress: bool = True,
    *,
    hf_cache: Path | None = None,
    ms_cache: Path | None = None,
    workers: int | None = None,
    record: bool = True,
    record_under: Sequence[str] | None = None,
    into_lock: bool | None = None,
    rehash: bool = False,
) -> DownloadResult:
    """Fetch `profile`'s weights into the Hugging Face (or ModelScope) cache and record them.

    `source`: auto, hf, hf-mirror, modelscope, an HF-compatible URL, modelscope:URL, or a folder.
    The cache is HF_HUB_CACHE / HF_HOME/hub (MODELSCOPE_CACHE for ModelScope), else the data
    disk's (see provision.settings). The record is for `lock_file` (default: the profile's lock
    as `find_lock` finds it), in `[tool.provision.model]`, or
    `[tool.provision.<record_under...>.model]` when several profiles share the lock (default:
    ("members", name) in a direction's lock). It goes into the lock itself when `into_lock`
    (default: when `lock_file` was given), else into this machine's record (lockfile.record).

    A cached file is reused when its hash is right: checked cheaply against the size and mtime
    stamped when it was placed (see stamps.py), in full when those differ or with `rehash`; a
    file with wrong bytes is fetched again.
    """
    from provision.lock.lockfile import check_lock_name, find_lock, member_path
    from provision.settings import autodl_notes, hf_hub_cache, modelscope_cache

    started = time.monotonic()
    for asked in (revision, profile.revision):
        if asked:
            check_revision(asked)  # before any request: it becomes a file name in the cache
    includes, excludes = _patterns(include), _patterns(exclude)
    lock = Path(lock_file) if lock_file else find_lock(profile.name)
    check_lock_name(lock)  # the record goes into it: a PEP 751 name, as `provision lock` writes
    if into_lock is None:
        into_lock = lock_file is not None
    if record_under is None:
        record_under = member_path(lock, profile.name)
    pinned = model_record(lock, record_under)
    if pinned and pinned["repo_id"] not in (profile.hf_repo, profile.modelscope_repo):
        pinned = None  # the profile moved to another repository: the old pin does not apply
    checked_pin(lock, "model", pinned)
    plan = _Plan(
        profile=profile,
        includes=includes,
        excludes=excludes,
        explicit_revision=revision,
        pinned=pinned,
        hf_cache=Path(hf_cache) if hf_cache else hf_hub_cache(),
        ms_cache=Path(ms_cache) if ms_cache else modelscope_cache(),
        workers=workers or int(env_value(WORKERS_ENV)),
        progress=progress,
        rehash=rehash,
    )
    if source == "auto" and profile.local_folder is not None:
        source = str(profile.local_folder)  # derived from a folder: no hub has it
    result = fetch_with_fallback(plan, source)
    result.notes.extend(autodl_notes())
    if record:
        result.record_file = _record(lock, result.record(), record_under, into_lock)
        result.lock_file = lock
    result.seconds = time.monotonic() - started
    return result


def fetch_with_fallback(plan: _Plan, source: str) -> DownloadResult:
    """Pick the source (`auto`: probed; else the one named), run `plan` there, and fall back to
    the other sources that answered when one keeps failing. For weights and datasets alike."""
    target = plan.profile
    repos = {"hf": target.hf_repo, "modelscope": target.modelscope_repo, "local": target.hf_repo}
    what = "Dataset" if plan.repo_type == "dataset" else "Profile"
    choice: Choice | None = None
    if source == "auto":
        candidates = auto_candidates(has_modelscope=bool(target.modelscope_repo))
        probe_rev = plan.explicit_revision or _pinned_revision(plan.pinned, "hf") or target.revision
        choice = choose_source(
            candidates, repos, probe_rev if probe_rev else None, repo_type=plan.repo_type
        )
        order, reason = [choice.source], choice.reason
    else:
        chosen = parse_source(source)
        if chosen.kind == "modelscope" and not target.modelscope_repo:
            fix = (
                f"Add source.modelscope to {target.path}, or use another --source."
                if target.path
                else "Give it as modelscope:ORG/NAME (its ModelScope id), or use another --source."
            )
            raise ProvisionError(f"{what} {target.name} names no ModelScope repository.", fix)
        order, reason = [chosen], f"{chosen.name}: chosen with --source"
    # Before any hub call: huggingface_hub itself reads HF_HOME/token and fails on a file there.
    require_usable(plan.hf_cache, "The download cache", CACHE_FIX, write=False)
    failures: list[dict[str, str]] = []
    index = 0
    while True:
        current = order[index]
        try:
            result = plan.run(current, repos[current.kind] or target.hf_repo)
            break
        except SourceFailed as exc:
            failures.append({"source": current.name, "error": exc.message})
            if choice is not None and index + 1 == len(order):
                order.extend(s for s in choice.fallbacks() if s not in order)
            if index + 1 >= len(order):
                if len(failures) == 1:
                    raise
                tried = "; ".join(f"{f['source']}: {f['error']}" for f in failures)
                raise ProvisionError(
                    f"Every source failed for {target.name}: {tried}",
                    "Files already downloaded are kept; run again later or pick --source.",
                ) from exc
            index += 1
    if failures:
        reason = f"{order[index].name}: took over after " + "; ".join(
            f"{f['source']} failed ({f['error']})" for f in failures
        )
    result.reason = reason
    result.fallbacks = failures
    result.probes = [p.to_json() for p in choice.probes] if choice is not None else []
    result.include, result.exclude = plan.includes, plan.excludes
    return result


# Keys of [tool.provision.model] the download owns; others (the lock stage's) are kept.
RECORD_KEYS = ("source", "endpoint", "repo_id", "revision", "commit", "include", "exclude", "files")


def _record(
    lock: Path, record: dict[str, Any], record_under: Sequence[str] = (), into_lock: bool = False
) -> Path:
    """Write the model record for the lock (lockfile.record: into it, or this machine's record),
    atomically, keeping keys other stages put there; returns the file written."""
    from provision.lock.lockfile import record as record_into

    def change(data: dict[str, Any]) -> None:
        table = data.setdefault("tool", {}).setdefault("provision", {})
        for part in record_under:
            table = table.setdefault(part, {})
        old = table.get("model", {})
        kept = (
            {k: v for k, v in old.items() if k not in RECORD_KEYS} if isinstance(old, dict) else {}
        )
        table["model"] = {**kept, **record}

    return record_into(lock, change, into_lock=into_lock)


def _pinned_revision(pinned: dict[str, Any] | None, kind: str) -> str | None:
    if not pinned or _kind_of(pinned) != kind:
        return None
    commit = pinned.get("commit")
    if isinstance(commit, str) and COMMIT_RE.match(commit):
        return commit
    return pinned.get("revision")


class Target(Protocol):
    """What is fetched: a profile's weights, or a dataset (provision.hub.datasets.DatasetRef)."""

    name: str
    hf_repo: str
    modelscope_repo: str | None
    revision: str | None
    path: Path | None


@dataclass
class _Plan:
    profile: Target
    includes: list[str]
    excludes: list[str]
    explicit_revision: str | None
    pinned: dict[str, Any] | None
    hf_cache: Path
    ms_cache: Path
    workers: int
    progress: bool
    rehash: bool = False
    repo_type: str = "model"  # or "dataset": the hubs' dataset routes and cache folders

    def revisions(self, kind: str) -> tuple[str | None, str | None]:
        """(what to ask the source for, the branch or tag name to record).

        A lock that pins a commit is asked for by commit, and its branch name still gets a
        refs/ entry, so `from_pretrained(repo_id)` finds the pinned snapshot offline.
        """
        if self.explicit_revision:
            return self.explicit_revision, self.explicit_revision
        if self.pinned and _kind_of(self.pinned) == kind and kind != "local":
            name = self.pinned.get("revision")
            if kind == "hf":
                return _pinned_revision(self.pinned, kind), name
            return name, name  # ModelScope snapshots are named by revision, not commit
        return self.profile.revision, self.profile.revision

    def pinned_hashes(self, kind: str, repo_id: str) -> dict[str, str]:
        """path -> sha256 the lock expects (same kind of source and repository only)."""
        if self.explicit_revision or not self.pinned or _kind_of(self.pinned) != kind:
            return {}
        if self.pinned.get("repo_id") != repo_id:
            return {}
        return {f["path"]: f["sha256"] for f in self.pinned.get("files", []) if "sha256" in f}

    def run(self, source: Source, repo_id: str) -> DownloadResult:
        if source.kind == "modelscope":
            return self._modelscope(source, repo_id)
        return self._huggingface(source, repo_id)

    # --- Hugging Face layout (hub, mirrors, local folders) -------------------------------------
    def _huggingface(self, source: Source, repo_id: str) -> DownloadResult:
        token = hf_token() if source.kind == "hf" else None
        ask, name = self.revisions(source.kind)
        if source.kind == "local":
            listing = local_listing(source, repo_id, ask, self.repo_type)
        else:
            listing = hf_listing(source, repo_id, ask, token, self.repo_type)
        if name and name != listing.revision:
            listing.revision = name
        # A gated repository without a token is not refused here: files already in the cache
        # need no request, and a file that does gets the hub's 401/403, which `transfer` turns
        # into the license-and-token message.
        assert listing.commit is not None
        commit = listing.commit
        files = select(listing, self.includes, self.excludes)
        cache = HfCache(self.hf_cache, repo_id, self.repo_type)
        for f in files:
            cache.pointer(commit, f.path)  # refuses a path that resolves outside the snapshot
        self._check_pins(source.kind, repo_id, {f.path: f.sha256 for f in files if f.sha256})

        reused: dict[str, str] = {}  # path -> sha256 of files already in the cache
        jobs: list[Job] = []
        # Bookkeeping per file, built once: each blob's paths, and what killed runs of
        # huggingface_hub left (one listing of the folder). Asking per finished file instead
        # scanned every file of the repo each time: quadratic in the file count.
        by_blob: dict[Path, list[RemoteFile]] = {}
        for f in files:
            by_blob.setdefault(cache.blob(f.etag), []).append(f)
        leftovers = cache.all_leftovers()
        pins = self.pinned_hashes(source.kind, repo_id)
        for f in files:
            blob = cache.blob(f.etag)
            if blob.exists() and blob.stat().st_size == f.size:
                sha = self._reusable(cache.cache, blob, f, pins)
                if sha is not None:
                    reused[f.path] = sha
                    cache.link(commit, f.path, f.etag)
                    continue
                _discard(blob)  # wrong bytes under the right name: fetched again below
            jobs.append(
                Job(
                    path=f.path,
                    size=f.size,
                    target=blob,
                    partial=cache.partial(f.etag),
                    lock=cache.lock(f.etag),
                    sha256=f.sha256,
                    git_oid=None if f.lfs else f.blob_id,
                    url=_resolve_url(source, repo_id, commit, f.path, self.repo_type),
                    origin=f.origin,
                    leftovers=tuple(leftovers.get(f.etag, ())),
                )
            )
        # One job per blob: two paths with the same content share it.
        unique = list({job.target: job for job in jobs}.values())

        def still_needed(job: Job) -> bool:
            return not (job.target.exists() and job.target.stat().st_size == job.size)

        def placed(outcome: Outcome) -> None:
            for f in by_blob[outcome.job.target]:
                cache.link(commit, f.path, f.etag)

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        blobs = cache.storage / "blobs"

        # The ref and the tree listing come from the listing alone: they are written while the
        # files transfer (huggingface_hub's snapshot_download writes both before its files), so
        # their durable writes (an fsync of the file and one of its folder, each) overlap the
        # transfers instead of following the last one (issue 17).
        def meta_files() -> None:
            cache.write_ref(listing.revision, commit)
            cache.write_tree(commit, listing.files)

        from concurrent.futures import ThreadPoolExecutor

        # Leaving the block waits for the meta files; after a failed transfer its error is the
        # one to tell, so the meta files' own error is read only after a good one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            meta = pool.submit(meta_files)
            outcomes = self._fetch(
                source, repo_id, unique, headers, files, still_needed, placed, blobs, cache.cache
            )
        meta.result()
        hashes = dict(reused)
        for outcome in outcomes:
            sha = outcome.sha256 or file_sha256(outcome.job.target)
            for f in by_blob[outcome.job.target]:
                hashes[f.path] = sha
        for f in files:  # same blob as another path in this run
            if f.path not in hashes:
                hashes[f.path] = f.sha256 if f.lfs and f.sha256 else file_sha256(cache.blob(f.etag))
        self._check_pins(source.kind, repo_id, hashes)
        snapshot = cache.snapshot(commit)
        return self._result(source, listing, files, hashes, outcomes, self.hf_cache, snapshot)

    # --- ModelScope layout ---------------------------------------------------------------------
    def _modelscope(self, source: Source, repo_id: str) -> DownloadResult:
        revision = self.revisions("modelscope")[0] or "master"
        listing = modelscope_listing(source, repo_id, revision, self.repo_type)
        files = select(listing, self.includes, self.excludes)
        cache = ModelScopeCache(self.ms_cache, repo_id, self.repo_type)
        for f in files:
            cache.file(revision, f.path)
        self._check_pins("modelscope", repo_id, {f.path: f.sha256 for f in files if f.sha256})
        reused: dict[str, str] = {}
        jobs = []

        def still_needed(job: Job) -> bool:
            return not _verified(job.target, job.size, job.sha256, cache.cache, self.rehash)

        pins = self.pinned_hashes("modelscope", repo_id)
        for f in files:
            target = cache.file(revision, f.path)
            want = f.sha256 or pins.get(f.path)  # no hash in the listing: the lock's, if any
            if _verified(target, f.size, want, cache.cache, self.rehash):
                reused[f.path] = want or file_sha256(target)
                continue
            jobs.append(
                Job(
                    path=f.path,
                    size=f.size,
                    target=target,
                    partial=cache.partial(revision, f.path),
                    lock=cache.lock(f.path),
                    sha256=want,
                    url=_modelscope_url(source, repo_id, revision, f.path, self.repo_type),
                )
            )
        token = listing.token or modelscope_token()
        headers = {"Cookie": f"m_session_id={token}"} if token else {}
        snapshot = cache.snapshot(revision)
        outcomes = self._fetch(
            source, repo_id, jobs, headers, files, still_needed, None, snapshot, cache.cache
        )
        hashes = dict(reused)
        for outcome in outcomes:
            hashes[outcome.job.path] = outcome.sha256 or file_sha256(outcome.job.target)
        self._check_pins("modelscope", repo_id, hashes)
        return self._result(source, listing, files, hashes, outcomes, self.ms_cache, snapshot)

    @staticmethod
    def _unverified(f: RemoteFile, pins: dict[str, str]) -> bool:
        """No hash from the source (no sha256, no git blob id, not a local file) and none pinned
        by the lock (`pins`): nothing ever checked these bytes."""
        if f.sha256 or f.blob_id or f.origin is not None:
            return False
        return f.path not in pins

    def _reusable(self, root: Path, blob: Path, f: RemoteFile, pins: dict[str, str]) -> str | None:
        """The sha256 of a cached blob of the right size when its bytes are right, else None.

        LFS blobs are named by their sha256; plain-git blobs by git's blob id (their sha256 is
        what the lock pins). The stamp from placement spares reading the file again."""
        if f.lfs:
            return f.sha256 if stamps.matches(root, blob, f.sha256, self.rehash) else None
        want = pins.get(f.path)
        if want and not self.rehash and stamps.trusted(root, blob, want):
            return want
        if stamps.git_blob_id(blob) != f.blob_id:
            return None
        return stamps.hash_and_record(root, blob)

    # --- shared ----------------------------------------------------------------------------------
    def _fetch(
        self,
        source: Source,
        repo_id: str,
        jobs: list[Job],
        headers: dict[str, str],
        files: list[RemoteFile],
        still_needed: Any,
        placed: Any,
        where: Path,
        root: Path,
    ) -> list[Outcome]:
        """Run the transfers into `where`; every file placed here gets its stamp under `root`
        (the cache), so the next run trusts it unread (stamps.py)."""
        total = sum(f.size for f in files)
        have = sum(j.partial.stat().st_size for j in jobs if j.partial.exists())
        need = sum(j.size for j in jobs) - have
        _check_space(where, need, repo_id)
        display: Progress = make_progress(self.progress and bool(jobs))
        client, owned = None, False
        if any(j.url for j in jobs):
            from provision.hub.sources import transfer_client

            client, owned = transfer_client(source)
        fetcher = Fetcher(
            client,
            headers,
            display,
            describe=source.name,
            repo_id=repo_id,
            gated_page=source.license_page(repo_id, self.repo_type),
            hub="modelscope" if source.kind == "modelscope" else "huggingface",
        )

        def done(outcome: Outcome) -> None:
            # In the worker that placed the file (run_jobs), while the others still transfer.
            if outcome.sha256 and not outcome.placed_by_other:
                stamps.record(root, outcome.job.target, outcome.sha256)
            if placed is not None:
                placed(outcome)

        display.start(f"{repo_id} from {source.name}", total, total - need)
        try:
            return run_jobs(fetcher, jobs, self.workers, still_needed, done)
        finally:
            display.stop()
            if owned:
                client.close()

    def _check_pins(self, kind: str, repo_id: str, hashes: dict[str, str | None]) -> None:
        expected = self.pinned_hashes(kind, repo_id)
        wrong = [p for p, sha in hashes.items() if sha and p in expected and expected[p] != sha]
        if wrong:
            raise ProvisionError(
                f"{repo_id}: {', '.join(wrong[:5])} differ from the hashes the lockfile records "
                f"for commit {self.pinned.get('commit') if self.pinned else '?'}.",
                "The source serves other content than was locked. Use the source named in the "
                "lock, or pass --revision to fetch and record a new revision on purpose.",
            )

    def _result(
        self,
        source: Source,
        listing: Listing,
        files: list[RemoteFile],
        hashes: dict[str, str],
        outcomes: list[Outcome],
        cache_dir: Path,
        snapshot: Path,
    ) -> DownloadResult:
        fetched_paths = {o.job.path for o in outcomes if not o.placed_by_other}
        reused_bytes = sum(f.size for f in files if f.path not in fetched_paths)
        reused_bytes += sum(o.resumed for o in outcomes)
        # ModelScope: the one source whose listing may lack hashes. Built once, not per file.
        pins = self.pinned_hashes("modelscope", self.profile.modelscope_repo or "")
        return DownloadResult(
            profile=self.profile.name,
            source=source,
            reason="",
            repo_id=listing.repo_id,
            revision=listing.revision,
            commit=listing.commit,
            files=[
                FileRecord(f.path, f.size, hashes[f.path], unverified=self._unverified(f, pins))
                for f in files
            ],
            bytes_fetched=sum(o.fetched for o in outcomes),
            bytes_reused=reused_bytes,
            files_fetched=len(fetched_paths),
            files_reused=len(files) - len(fetched_paths),
            cache_dir=cache_dir,
            snapshot=snapshot,
        )


def _resolve_url(
    source: Source, repo_id: str, commit: str, path: str, repo_type: str = "model"
) -> str | None:
    """huggingface_hub's hf_hub_url: datasets resolve under /datasets/ (REPO_TYPES_URL_PREFIXES)."""
    if source.kind != "hf":
        return None
    from urllib.parse import quote

    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{source.request_url}/{prefix}{repo_id}/resolve/{commit}/{quote(path)}"


def _modelscope_url(
    source: Source, repo_id: str, revision: str, path: str, repo_type: str = "model"
) -> str:
    """modelscope-hub's file URL: /api/v1/{models|datasets}/{id}/repo?Revision=&FilePath=."""
    from urllib.parse import quote_plus

    return (
        f"{source.request_url}/api/v1/{repo_type}s/{repo_id}/repo"
        f"?Revision={quote_plus(revision)}&FilePath={quote_plus(path)}"
    )


def _verified(path: Path, size: int, sha256: str | None, root: Path, rehash: bool) -> bool:
    """A plain cached file (ModelScope's layout is named by path, not content): its size, then
    its sha256 (from the placement stamp when the file is unchanged since, else read in full)."""
    if not path.is_file() or path.stat().st_size != size:
        return False
    return sha256 is None or stamps.matches(root, path, sha256, rehash)


def _discard(path: Path) -> None:
    """Remove a cached file whose bytes are wrong (it is fetched again)."""
    import contextlib

    with contextlib.suppress(FileNotFoundError):
        path.unlink()


CACHE_FIX = (
    "Point HF_HOME (or MODELSCOPE_CACHE) at a folder you can write, or set PROVISION_DATA_DIR "
    "and run `provision env --persist`."
)


def _check_space(where: Path, need: int, repo_id: str) -> None:
    if need <= 0:
        return  # everything is cached: a read-only shared cache is fine
    require_usable(where, "The download cache", CACHE_FIX)
    probe = nearest_existing(where)
    free = shutil.disk_usage(probe).free
    if need > free:
        raise disk_full(str(probe), need, free, repo_id)
