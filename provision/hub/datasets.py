"""Datasets: a hub's dataset repository fetched, pinned and verified like weights.

    from provision.hub.datasets import parse_dataset, download_dataset, verify_dataset
    ref = parse_dataset("lmms-lab/OK-VQA@main")          # or modelscope:org/name
    result = download_dataset(ref, lock_file=lock)       # -> DownloadResult (repo_type "dataset")
    check = verify_dataset(ref.key, lock)                # -> VerifyResult

The files go through the weights' downloader (download._Plan: per-file stamps, sha256 of LFS
files, resume of partial files, the same checks on every name and hash a server sends) into the
clients' own dataset caches: `HF_HUB_CACHE/datasets--{org}--{name}/` (huggingface_hub's
`repo_folder_name(repo_type="dataset")`) and `MODELSCOPE_CACHE/datasets/{org}--{name}/`
(modelscope-hub). The hubs are asked on their dataset routes: `/api/datasets/{id}/revision/{rev}`,
`/api/datasets/{id}/tree/{rev}`, `/datasets/{id}/resolve/{commit}/{path}` (Hugging Face);
`/api/v1/datasets/{id}/repo/tree` and `/api/v1/datasets/{id}/repo?FilePath=` (ModelScope).

The record is `[tool.provision.datasets."<key>"]` in the lock (the key is the id the dataset was
asked by): source, endpoint, repo_id, revision, commit and every file's size and sha256. A lock
that pins a dataset's commit is what a later download fetches and checks against.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.hub.cache import check_revision
from provision.hub.download import (
    RECORD_KEYS,
    WORKERS_ENV,
    DownloadResult,
    _patterns,
    _Plan,
    checked_pin,
    fetch_with_fallback,
)
from provision.hub.verify import VerifyResult, verify_record

DATASETS_LOCK = "pylock.datasets.toml"  # where a dataset goes when no profile or --lock is named


@dataclass(frozen=True)
class DatasetRef:
    """A dataset repository to fetch: its id on Hugging Face and, where known, on ModelScope."""

    key: str  # how the lock names it: the id it was asked by (org/name)
    hf_repo: str
    modelscope_repo: str | None = None
    revision: str | None = None
    source: str | None = None  # a source the id itself named (modelscope:org/name)
    path: Path | None = None  # no file defines it (a profile has one; the Target protocol asks)

    @property
    def name(self) -> str:
        return self.key


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, dict[str, Any]]:
    """provision/data/datasets.toml: the datasets known by short name (okvqa, ...)."""
    from provision.resources import load_table

    return load_table("datasets.toml")


def catalog_entry(name: str) -> tuple[str, dict[str, Any]] | None:
    """The catalogue's (short name, entry) for a short name or a hub id it lists, else None."""
    table = catalog()
    if name in table:
        return name, table[name]
    for short, entry in table.items():
        if name in (entry.get("huggingface"), entry.get("modelscope")):
            return short, entry
    return None


def parse_dataset(text: str) -> DatasetRef:
    """A short name from the catalogue (okvqa), or `[source:]org/name[@revision]` as weights
    take repo ids; a clear message otherwise."""
    from provision.derive import parse_ref

    text = text.strip()
    known = catalog().get(text)
    if known is not None:
        return DatasetRef(known["huggingface"], known["huggingface"], known.get("modelscope"))
    ref = None if text.startswith((".", "/", "~")) else parse_ref(text)
    if ref is None or ref.folder is not None:
        raise ProvisionError(
            f"Dataset {text!r} is not a hub dataset id.",
            "Give it as org/name (e.g. lmms-lab/OK-VQA), optionally with @revision, as "
            f"modelscope:org/name for ModelScope, or a known name ({', '.join(catalog())}).",
        )
    if ref.revision:
        check_revision(ref.revision)
    ms = ref.repo_id if ref.source == "modelscope" else None
    entry = catalog_entry(ref.repo_id)
    if ms is None and entry is not None and entry[1].get("huggingface") == ref.repo_id:
        ms = entry[1].get("modelscope")  # a ModelScope copy the catalogue checked
    return DatasetRef(ref.repo_id, ref.repo_id, ms, ref.revision, ref.source)


def default_lock(profile_name: str | None = None) -> Path:
    """The lock a dataset is recorded for: the profile's when one is named, else
    pylock.datasets.toml where provision keeps locks (see lockfile.find_lock_file)."""
    from provision.lock.lockfile import find_lock, find_lock_file

    return find_lock(profile_name) if profile_name else find_lock_file(DATASETS_LOCK)


def dataset_records(lock_file: Path) -> dict[str, dict[str, Any]]:
    """`[tool.provision.datasets]` of a lock as this machine knows it (key -> record); records
    that are not tables with a repo id are left out (verify names them as missing)."""
    from provision.lock.lockfile import recorded_table

    if not Path(lock_file).exists():
        return {}
    table = recorded_table(lock_file).get("datasets")
    if not isinstance(table, dict):
        return {}
    return {
        str(k): v
        for k, v in table.items()
        if isinstance(v, dict) and isinstance(v.get("repo_id"), str) and v["repo_id"]
    }


def dataset_record(lock_file: Path, name: str) -> tuple[str, dict[str, Any]] | None:
    """The record for `name` (its key, or the repo id it came from), or None."""
    records = dataset_records(lock_file)
    if name in records:
        return name, records[name]
    for key, record in records.items():
        if record.get("repo_id") == name:
            return key, record
    return None


def download_dataset(
    ref: DatasetRef,
    source: str | None = None,
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
    into_lock: bool | None = None,
    rehash: bool = False,
) -> DownloadResult:
    """Fetch dataset `ref` into the hub caches and record it for `lock_file` (default:
    `default_lock()`), as download_profile does for weights: the same sources (`source`, else
    the one the id names, else auto), resume, verification and pins."""
    from provision.lock.lockfile import check_lock_name
    from provision.settings import autodl_notes, hf_hub_cache, modelscope_cache
    from provision.variables import env_value

    started = time.monotonic()
    if revision:
        check_revision(revision)
    lock = Path(lock_file) if lock_file else default_lock()
    check_lock_name(lock)
    if into_lock is None:
        into_lock = lock_file is not None
    found = dataset_record(lock, ref.key)
    pinned = checked_pin(lock, f"datasets.{ref.key!r}", found[1] if found else None)
    if pinned and pinned["repo_id"] not in (ref.hf_repo, ref.modelscope_repo):
        pinned = None  # the dataset moved to another repository: the old pin does not apply
    plan = _Plan(
        profile=ref,
        includes=_patterns(include),
        excludes=_patterns(exclude),
        explicit_revision=revision,  # ref.revision is the default, as a profile's revision is
        pinned=pinned,
        hf_cache=Path(hf_cache) if hf_cache else hf_hub_cache(),
        ms_cache=Path(ms_cache) if ms_cache else modelscope_cache(),
        workers=workers or int(env_value(WORKERS_ENV)),
        progress=progress,
        rehash=rehash,
        repo_type="dataset",
    )
    result = fetch_with_fallback(plan, source or ref.source or "auto")
    result.repo_type = "dataset"
    result.notes.extend(autodl_notes())
    if record:
        result.record_file = record_dataset(lock, ref.key, result.record(), into_lock)
        result.lock_file = lock
    result.seconds = time.monotonic() - started
    return result


def record_dataset(lock: Path, key: str, record: dict[str, Any], into_lock: bool = False) -> Path:
    """`[tool.provision.datasets."<key>"]` = the download's record (keys other stages put there
    are kept), atomically: into the lock, or this machine's record (lockfile.record)."""
    from provision.lock.lockfile import record as record_into

    def change(data: dict[str, Any]) -> None:
        table = data.setdefault("tool", {}).setdefault("provision", {})
        datasets = table.get("datasets")
        if not isinstance(datasets, dict):
            datasets = table["datasets"] = {}
        old = datasets.get(key)
        kept = (
            {k: v for k, v in old.items() if k not in RECORD_KEYS} if isinstance(old, dict) else {}
        )
        datasets[key] = {**kept, **record}

    return record_into(lock, change, into_lock=into_lock)


def verify_dataset(
    name: str,
    lock_file: Path | str | None = None,
    *,
    hf_cache: Path | None = None,
    ms_cache: Path | None = None,
    hashes: bool = True,
) -> VerifyResult:
    """Re-hash the dataset `name` (its key or repo id) on disk against the lock's record."""
    lock = Path(lock_file) if lock_file else default_lock()
    if not lock.exists():
        raise ProvisionError(
            f"Lockfile {lock} does not exist.",
            f"Run `provision download --dataset {name}` first, or pass --lock FILE.",
        )
    found = dataset_record(lock, name)
    if found is None or not found[1].get("files"):
        known = ", ".join(dataset_records(lock)) or "none"
        raise ProvisionError(
            f"{lock} records no dataset {name} (it records: {known}).",
            f"Run `provision download --dataset {name} --lock {lock}` to fetch and record it.",
        )
    key, record = found
    checked_pin(lock, f"datasets.{key!r}", record)
    return verify_record(
        key,
        lock,
        record,
        hf_cache=hf_cache,
        ms_cache=ms_cache,
        hashes=hashes,
        repo_type="dataset",
    )


def dataset_snapshot(
    record: dict[str, Any], *, hf_cache: Path | None = None, ms_cache: Path | None = None
) -> Path:
    """The folder holding a recorded dataset's files, in the cache it was downloaded into."""
    from provision.hub.cache import HfCache, ModelScopeCache
    from provision.hub.download import _kind_of
    from provision.settings import hf_hub_cache, modelscope_cache

    repo_id = record["repo_id"]
    if _kind_of(record) == "modelscope":
        cache = ModelScopeCache(ms_cache or modelscope_cache(), repo_id, "dataset")
        return cache.snapshot(str(record.get("revision") or "master"))
    commit = record.get("commit")
    if not isinstance(commit, str) or not commit:
        raise ProvisionError(f"The dataset record of {repo_id} has no commit.")
    return HfCache(hf_cache or hf_hub_cache(), repo_id, "dataset").snapshot(commit)
