"""Profiles derived from a model's own metadata: a hub repo id or a local model folder wherever a
profile name is taken.

    provision check Qwen/Qwen2.5-VL-32B-Instruct        # the Hub (or HF_ENDPOINT's mirror)
    provision check modelscope:Qwen/Qwen2.5-VL-7B-Instruct@master
    provision check ./my-finetune                         # a save_pretrained folder

`load_derived(ref)` reads config.json, the processor config, generation_config.json and the
safetensors headers (two Range reads per shard at most; never the weights), sorts the tensors by
the family table (provision/data/families.toml), and writes the result as an ordinary profile
TOML into the metadata cache on the data disk, keyed by repository and commit. A second call
reads that TOML back without any request (and without importing the hub clients or torch).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError

CACHE_ENV = "PROVISION_METADATA_CACHE"
OFFLINE_ENV = "PROVISION_OFFLINE"
REF_RE = re.compile(
    r"^(?:(?P<source>[a-z][a-z0-9-]*):)?"
    r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
    r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]{0,127}))?$"
)
WEIGHT_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class Ref:
    """What the user typed: a repo on a source (at a revision), or a folder."""

    repo_id: str
    revision: str | None = None
    source: str | None = None  # a source name from hub_sources.toml; None: the default order
    folder: Path | None = None

    @property
    def text(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        prefix = f"{self.source}:" if self.source else ""
        return f"{prefix}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_ref(text: str) -> Ref | None:
    """A Ref when `text` is a repo id (`[source:]org/name[@revision]`) or a model folder."""
    if text.endswith(".toml"):
        return None
    path = Path(text).expanduser()
    if (text.startswith((".", "/", "~")) or os.sep in text.rstrip(os.sep)) and path.is_dir():
        return Ref(repo_id=path.resolve().name, folder=path.resolve())
    match = REF_RE.match(text)
    if not match or ".." in text:
        return None
    source = match.group("source")
    if source is not None:
        from provision.hub.sources import source_table

        table = source_table()
        source = table.get("aliases", {}).get(source, source)
        if source not in table["sources"]:
            known = ", ".join(table["sources"])
            raise ProvisionError(
                f"Unknown source '{match.group('source')}' in {text!r}.",
                f"Use one of {known} before the colon (e.g. modelscope:org/name), or leave it out.",
            )
    return Ref(match.group("repo"), match.group("revision"), source)


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes")
        for v in (OFFLINE_ENV, "HF_HUB_OFFLINE")
    )


# --- the cache ---------------------------------------------------------------------------------


def cache_root() -> Path:
    """PROVISION_METADATA_CACHE, else provision/metadata on the data disk."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from provision.settings import resolve_data_dir

    return resolve_data_dir() / "provision" / "metadata"


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def _repo_dir(ref: Ref) -> Path:
    if ref.folder is not None:
        import hashlib

        digest = hashlib.sha256(str(ref.folder).encode()).hexdigest()[:12]
        return cache_root() / f"local--{_key(ref.repo_id)}-{digest}"
    return cache_root() / f"models--{ref.repo_id.replace('/', '--')}"


def _ref_file(ref: Ref) -> Path:
    where = ref.source or _default_source_key()
    return _repo_dir(ref) / "refs" / _key(f"{where}@{ref.revision or 'default'}")


def _default_source_key() -> str:
    """Which sources a plain org/name goes to, as a file name (a digest: a URL may carry a
    password, which must not become a file name)."""
    import hashlib

    chosen = os.environ.get("HF_ENDPOINT") or os.environ.get("PROVISION_SOURCES")
    return "auto-" + hashlib.sha256(chosen.encode()).hexdigest()[:12] if chosen else "auto"


def profile_name_for(repo_id: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", repo_id.rsplit("/", 1)[-1].lower()).strip("-._")
    return name or "model"


def cached_profile_path(ref: Ref) -> Path | None:
    """The derived TOML a warm cache holds for `ref`, or None."""
    if ref.folder is not None:
        return None  # a folder can change under the same name: derived again (no network)
    ref_file = _ref_file(ref)
    try:
        commit = ref_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not re.fullmatch(r"[A-Za-z0-9-]{8,64}", commit):
        return None
    folder = _repo_dir(ref) / commit
    found = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    return found[0] if found else None


def find_cached_by_name(name: str) -> Path | None:
    """A derived profile by its profile name (what locks and Dockerfiles record)."""
    try:
        root = cache_root()
    except ProvisionError:
        return None
    if not root.is_dir():
        return None
    found = sorted(root.glob(f"*/*/{name}.toml"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


# --- deriving ----------------------------------------------------------------------------------


def load_derived(ref: Ref, offline: bool | None = None) -> Path:
    """The path of the derived profile TOML for `ref`: from the cache, else derived and cached."""
    cached = cached_profile_path(ref)
    if cached is not None:
        return cached
    if is_offline(offline) and ref.folder is None:
        raise ProvisionError(
            f"No cached metadata for {ref.text} and --offline (or PROVISION_OFFLINE / "
            "HF_HUB_OFFLINE) forbids asking the hub.",
            f"Run once with the network (`provision profiles add {ref.text}`), or drop --offline.",
        )
    result = derive(ref)
    return write_cache(ref, result)


@dataclass
class Derived:
    name: str
    commit: str
    data: dict[str, Any]  # the profile, as TOML data
    metadata: dict[str, Any]  # what was read, for the cache
    requests: int


def derive(ref: Ref) -> Derived:
    """Read the metadata of `ref` and build its profile (requests are counted in the result)."""
    from provision.derive.fetch import LocalRepo, UnreachableError, hub_repos

    candidates = (
        [LocalRepo(ref.folder)]
        if ref.folder is not None
        else hub_repos(ref.repo_id, ref.revision, ref.source)
    )
    for i, repo in enumerate(candidates):
        try:
            meta, facts = read_metadata(repo)
            break
        except UnreachableError:
            if i == len(candidates) - 1:
                raise  # every source was tried; the last one's message names it
    else:  # pragma: no cover - the loop either breaks or raises
        raise ProvisionError(f"No source answered for {ref.text}.")
    from provision.derive.assemble import assemble

    name = profile_name_for(ref.repo_id)  # a folder's name for a folder
    data = assemble(meta, ref, repo, facts, name)
    metadata = {
        "repo": ref.repo_id,
        "commit": repo.commit,
        "config": meta.config,
        "preprocessor": meta.preprocessor,
        "generation": meta.generation,
        "tensors": None
        if meta.tensors is None
        else [[t.name, t.dtype, list(t.shape)] for t in meta.tensors],
        "index_total_size": meta.index_total_size,
        "requests": repo.requests,
    }
    return Derived(name, repo.commit, data, metadata, repo.requests)


def read_metadata(repo: Any) -> tuple[Any, list[str]]:
    """config, processor config, generation config and the weights' headers of `repo`."""
    from provision.derive.build import Metadata
    from provision.derive.fetch import safe_path
    from provision.derive.safetensors import read_header, tensors_of

    files = repo.list_files()
    facts: list[str] = []
    if "config.json" not in files:
        raise ProvisionError(
            f"{repo.repo_id} ({repo.where}) has no config.json, so there is nothing to derive a "
            "profile from.",
            "Point at the repository that holds the transformers checkpoint (org/name), or write "
            "a profile by hand (`provision profiles show qwen2-vl-2b` is a complete example).",
        )
    config = repo.get_json("config.json")
    if config is None:
        raise ProvisionError(f"{repo.repo_id} has no config.json.", "Check the repository.")
    meta = Metadata(repo_id=repo.repo_id, config=config)
    for name in PROCESSOR_FILES:
        if name in files:
            meta.preprocessor.update(repo.get_json(name) or {})
    if isinstance(meta.preprocessor.get("image_processor"), dict):
        meta.preprocessor = {**meta.preprocessor["image_processor"], **meta.preprocessor}
    if "generation_config.json" in files:
        meta.generation = repo.get_json("generation_config.json") or {}
    shards: list[str] = []
    if WEIGHT_INDEX in files:
        index = repo.get_json(WEIGHT_INDEX) or {}
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ProvisionError(
                f"{WEIGHT_INDEX} in {repo.repo_id} has no weight_map.",
                "The repository's index is broken; try another revision.",
            )
        for shard in weight_map.values():
            if not safe_path(shard) or not shard.endswith(".safetensors"):
                raise ProvisionError(
                    f"{WEIGHT_INDEX} in {repo.repo_id} names a shard {str(shard)[:80]!r} that is "
                    "not a safetensors file in the repository.",
                    "Do not use this revision.",
                )
            if shard not in shards:
                shards.append(shard)
        total = (index.get("metadata") or {}).get("total_size")
        if isinstance(total, int) and total > 0:
            meta.index_total_size = total
    else:
        shards = sorted(f for f in files if f.endswith(".safetensors") and "/" not in f)
    if shards:
        tensors = []
        for shard in shards:
            where = f"{repo.repo_id}/{shard} ({repo.where})"

            def read(start: int, end: int, shard: str = shard) -> tuple[bytes, int | None]:
                return repo.read_range(shard, start, end)

            tensors.extend(tensors_of(read_header(read, where), where))
        meta.tensors = tensors
        return meta, facts
    # No safetensors: the .bin index's total_size, else the config alone.
    meta.weight_format = "pytorch"
    if BIN_INDEX in files:
        index = repo.get_json(BIN_INDEX) or {}
        total = (index.get("metadata") or {}).get("total_size")
        if isinstance(total, int) and total > 0:
            meta.index_total_size = total
            facts.append(
                "only .bin weights: sizes from pytorch_model.bin.index.json total_size; the "
                "vision/language split comes from the config, not from tensor headers"
            )
    if meta.index_total_size is None:
        facts.append(
            "only .bin weights and no index: parameters estimated from the config's shapes "
            "(no tensor headers to count)"
        )
    return meta, facts


def write_cache(ref: Ref, result: Derived) -> Path:
    """Write metadata.json and the profile TOML under the repo's commit, then the ref."""
    import tomli_w

    from provision.atomic import atomic_write_text

    folder = _repo_dir(ref) / _key(result.commit)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "metadata.json", json.dumps(result.metadata))
    path = folder / f"{result.name}.toml"
    header = (
        f"# Derived by provision from {ref.text} at commit {result.commit} "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}).\n"
        "# Edit freely: `provision profiles add` copies it into your profile folder.\n"
    )
    atomic_write_text(path, header + tomli_w.dumps(result.data))
    if ref.folder is None:
        ref_file = _ref_file(ref)
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ref_file, result.commit + "\n")
    return path
