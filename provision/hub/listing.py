"""What a repository holds at a revision, asked through the real clients.

Hugging Face: `HfApi.model_info` resolves the revision to a commit, `HfApi.list_repo_tree` gives
each file's size, git blob id and, for LFS files, the sha256. ModelScope: `HubApi.list_repo_files`
gives sizes and sha256. A local folder is read and hashed. Client errors become one message each.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import __version__
from provision.digest import file_sha256
from provision.errors import ProvisionError
from provision.hub.errors import SourceFailed, gated_message, unsafe_path
from provision.hub.sources import Source
from provision.secrets import redact_text

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A blob's name in the Hugging Face cache: git's sha1 (plain-git files) or the LFS sha256.
ETAG_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def check_etag(etag: object) -> str:
    """`etag`, after checking it is 40 or 64 lower-case hex digits: it becomes a file name under
    blobs/ and .locks/, so anything else (`../x`, `/etc/passwd`, empty) is refused."""
    if not isinstance(etag, str) or not ETAG_RE.match(etag):
        raise ValueError(f"{etag!r} is not a 40- or 64-hex blob id")
    return etag


@dataclass(frozen=True)
class RemoteFile:
    path: str  # '/'-separated path in the repository
    size: int
    sha256: str | None = None  # LFS sha256 (Hugging Face), Sha256 (ModelScope), hashed (local)
    blob_id: str | None = None  # git blob sha1 (Hugging Face files kept in plain git)
    lfs: bool = False
    origin: Path | None = None  # a local source's file

    @property
    def etag(self) -> str:
        """The name of the file's blob in the Hugging Face cache: sha256 for LFS, else git's id."""
        name = self.sha256 if self.lfs else self.blob_id
        if not name:
            raise ValueError(f"{self.path}: no hash to name its blob by")
        return name


@dataclass
class Listing:
    source: Source
    repo_id: str
    revision: str
    commit: str | None  # the revision resolved, when the hub tells (always for Hugging Face)
    files: list[RemoteFile] = field(default_factory=list)
    gated: bool = False
    token: str | None = field(default=None, repr=False)  # the client's own login, for transfers


def hf_token() -> str | None:
    """A Hugging Face token from HF_TOKEN or `hf auth login`'s file; read, never written."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"].strip()
    from huggingface_hub import get_token

    token = get_token()
    if token:
        return token
    # HF_HOME moved to the data disk: a login made before still sits in the default place.
    legacy = Path.home() / ".cache" / "huggingface" / "token"
    with contextlib.suppress(OSError):
        return legacy.read_text().strip() or None
    return None


def modelscope_token() -> str | None:
    return os.environ.get("MODELSCOPE_API_TOKEN") or None


# --- Hugging Face --------------------------------------------------------------------------------


@contextlib.contextmanager
def _hf_errors(
    source: Source, repo_id: str, revision: str, token: str | None, repo_type: str = "model"
) -> Iterator[None]:
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.name} ({source.endpoint})" if source.name != source.endpoint else source.name
    try:
        yield
    except GatedRepoError as exc:
        page = source.license_page(repo_id, repo_type)
        raise gated_message(repo_id, page, token is not None) from exc
    except RevisionNotFoundError as exc:
        raise ProvisionError(
            f"Revision {revision!r} of {repo_id} does not exist on {where}.",
            "Check source.revision in the profile or --revision (a branch, tag or 40-hex commit); "
            f"the revisions are listed at {source.page(repo_id)}.",
        ) from exc
    except RepositoryNotFoundError as exc:
        if repo_type == "dataset":
            raise ProvisionError(
                f"Dataset {repo_id} was not found on {where}.",
                "Check the dataset id (org/name, as on the hub's /datasets/ page). A private "
                "dataset also answers like this without a token: export HF_TOKEN=... or run "
                "`hf auth login`.",
            ) from exc
        raise ProvisionError(
            f"Repository {repo_id} was not found on {where}.",
            "Check source.huggingface in the profile. A private repository also answers like "
            "this without a token: export HF_TOKEN=... or run `hf auth login`.",
        ) from exc
    except OfflineModeIsEnabled as exc:
        raise ProvisionError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be downloaded.",
            "Unset HF_HUB_OFFLINE for the download (keep it for runs afterwards).",
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and (status >= 500 or status in (408, 429)):
            failed = SourceFailed(f"{where} answered {status} for {repo_id}.")
            failed.status = status  # type: ignore[attr-defined] - hf_listing retries these
            raise failed from exc
        kind = exc.response.headers.get("Content-Type", "?") if exc.response is not None else "?"
        raise _not_a_hub(source, f"{status} {kind.split(';')[0]}") from exc
    except (httpx2.TimeoutException, httpx2.TransportError) as exc:
        raise SourceFailed(
            f"Cannot reach {where}: {type(exc).__name__}: {redact_text(str(exc))}",
            "Check the network or the URL, or pick another --source (auto tries them all).",
        ) from exc
    except httpx2.TooManyRedirects as exc:
        raise ProvisionError(
            f"{where} redirects in a loop for {repo_id} ({redact_text(str(exc))}).",
            "The source is misconfigured: use another --source, or report it to the mirror.",
        ) from exc
    except ValueError as exc:  # a body that is not the JSON a hub sends
        raise _not_a_hub(source, "an answer that is not hub JSON") from exc
    except (KeyError, TypeError, AttributeError) as exc:  # JSON, but not in a hub's shapes
        raise _not_a_hub(source, f"a malformed answer: {type(exc).__name__}: {exc}") from exc


def _bad_entry(source: Source, repo_id: str, path: object, what: str) -> ProvisionError:
    return ProvisionError(
        f"{source.endpoint} lists {repo_id} file {path!r} with {what}.",
        "Nothing was downloaded and nothing was written. The source is malformed or hostile: "
        "use another --source (hf, hf-mirror, modelscope), or report it to the mirror.",
    )


def _hf_file(source: Source, repo_id: str, entry: Any) -> RemoteFile:
    """One tree entry, checked before anything is built from it: the blob ids become file names
    in the cache, so only 40/64-hex ids pass, and an LFS file's etag is its listed sha256."""
    path = entry.path
    if not isinstance(path, str):
        raise _bad_entry(source, repo_id, path, "a path that is not a string")
    lfs = entry.lfs is not None
    size = entry.lfs.size if lfs else entry.size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad_entry(source, repo_id, path, f"size {size!r} (not a byte count)")
    blob_id = entry.blob_id
    if not isinstance(blob_id, str) or not ETAG_RE.match(blob_id):
        raise _bad_entry(source, repo_id, path, f"oid {blob_id!r} (not a 40- or 64-hex blob id)")
    sha256 = entry.lfs.sha256 if lfs else None
    if lfs and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)):
        raise _bad_entry(source, repo_id, path, f"lfs.oid {sha256!r} (not a 64-hex sha256)")
    return RemoteFile(path=path, size=size, sha256=sha256, blob_id=blob_id, lfs=lfs)


def _not_a_hub(source: Source, what: str) -> ProvisionError:
    return ProvisionError(
        f"{source.endpoint} does not answer like a Hugging Face hub (it gave {what}).",
        "Use hf, hf-mirror, modelscope, the base URL of an HF-compatible mirror "
        "(e.g. https://hf-mirror.com), or a folder.",
    )


METADATA_TRIES = 3  # a 5xx on the metadata calls is tried again, as file transfers are


def hf_listing(
    source: Source,
    repo_id: str,
    revision: str | None,
    token: str | None,
    repo_type: str = "model",
) -> Listing:
    """The listing, with a transient answer (5xx, 408, 429) tried again after a pause.
    `repo_type` "dataset" asks the hub's /api/datasets/ routes (HfApi.dataset_info)."""
    import time

    from provision.hub.transfer import retry_wait

    for attempt in range(METADATA_TRIES):
        try:
            return _hf_listing_once(source, repo_id, revision, token, repo_type)
        except SourceFailed as exc:
            if getattr(exc, "status", None) is None or attempt + 1 == METADATA_TRIES:
                raise
            time.sleep(retry_wait() * 2**attempt)
    raise AssertionError("unreachable")


def _hf_listing_once(
    source: Source, repo_id: str, revision: str | None, token: str | None, repo_type: str = "model"
) -> Listing:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    revision = revision or "main"
    api = HfApi(
        endpoint=source.request_url,
        token=token or False,  # False: never fall back to a token of the library's own choosing
        library_name="provision",
        library_version=__version__,
    )
    with _hf_errors(source, repo_id, revision, token, repo_type):
        if repo_type == "dataset":
            info = api.dataset_info(repo_id, revision=revision, timeout=30)
        else:
            info = api.model_info(repo_id, revision=revision, timeout=30)
        commit = info.sha
        if not commit or not COMMIT_RE.match(commit):
            raise _not_a_hub(source, "no commit for the revision")
        files = []
        tree = api.list_repo_tree(repo_id, recursive=True, revision=commit, repo_type=repo_type)
        for entry in tree:
            if not isinstance(entry, RepoFile):
                continue
            files.append(_hf_file(source, repo_id, entry))
    return Listing(source, repo_id, revision, commit, files, gated=bool(info.gated))


# --- ModelScope ----------------------------------------------------------------------------------


def modelscope_listing(
    source: Source, repo_id: str, revision: str | None, repo_type: str = "model"
) -> Listing:
    """`repo_type` "dataset": modelscope-hub pages through /api/v1/datasets/{id}/repo/tree."""
    from modelscope_hub import errors as ms_errors
    from modelscope_hub.api import HubApi

    revision = revision or "master"
    api = HubApi(endpoint=source.request_url, token=modelscope_token())
    page = source.page(repo_id, repo_type)
    try:
        # The raw answer (what `api.list_repo_files` reads), for each file's "Revision" too.
        raw = api.legacy.list_repo_files(repo_id, repo_type, revision=revision, recursive=True)
        entries = _ms_entries(raw) if isinstance(raw, list) else raw
    except ms_errors.NotExistError as exc:
        try:
            api.legacy.get_repo_info(repo_id, repo_type)
        except ms_errors.NotExistError:
            what = "Dataset" if repo_type == "dataset" else "Repository"
            fix = (
                "Check the dataset id, or use another --source."
                if repo_type == "dataset"
                else "Check source.modelscope in the profile, or use another --source."
            )
            raise ProvisionError(
                f"{what} {repo_id} was not found on ModelScope ({source.endpoint}).", fix
            ) from exc
        raise ProvisionError(
            f"Revision {revision!r} of {repo_id} does not exist on ModelScope ({source.endpoint}).",
            f"Check --revision; the revisions are listed at {page}.",
        ) from exc
    except (ms_errors.AuthenticationError, ms_errors.PermissionDeniedError) as exc:
        raise gated_message(repo_id, page, modelscope_token() is not None, "modelscope") from exc
    except (ms_errors.NetworkError, ms_errors.ServerError, ms_errors.RequestTimeoutError) as exc:
        raise SourceFailed(
            f"ModelScope ({source.endpoint}) failed: {redact_text(str(exc))}"
        ) from exc
    except (ms_errors.APIError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProvisionError(
            f"{source.endpoint} does not answer like ModelScope ({redact_text(str(exc))}).",
            "Use modelscope, modelscope:URL with a ModelScope-compatible URL, or another source.",
        ) from exc
    if not isinstance(entries, list):
        raise ProvisionError(
            f"{source.endpoint} does not answer like ModelScope (a file list that is a "
            f"{type(entries).__name__}).",
            "Use modelscope, modelscope:URL with a ModelScope-compatible URL, or another source.",
        )
    files = [_ms_file(source, repo_id, e) for e in entries if not e.is_dir and e.path]
    commit = _modelscope_commit(api, repo_id, revision, repo_type, raw)
    # The client found the token (MODELSCOPE_API_TOKEN or `modelscope login`): used, never kept.
    return Listing(source, repo_id, revision, commit, files, token=api.legacy.token or None)


def _ms_file(source: Source, repo_id: str, entry: Any) -> RemoteFile:
    """One ModelScope listing entry, checked: a string path, a byte count, a 64-hex sha256 or
    none at all (then the file is recorded as unverified, see download.py)."""
    path, size, sha256 = entry.path, entry.size, entry.sha256 or None
    if not isinstance(path, str):
        raise _bad_entry(source, repo_id, path, "a path that is not a string")
    if isinstance(size, str) and size.isdigit():
        size = int(size)  # some ModelScope answers give sizes as strings of digits
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad_entry(source, repo_id, path, f"size {size!r} (not a byte count)")
    if sha256 is not None and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)):
        raise _bad_entry(source, repo_id, path, f"Sha256 {sha256!r} (not a 64-hex sha256)")
    return RemoteFile(path=path, size=size, sha256=sha256, lfs=True)


def _ms_entries(raw: list[Any]) -> list[Any]:
    """ModelScope's raw file entries as the client's FileInfo, read as `HubApi.list_repo_files`
    reads them (modelscope_hub/api.py); an entry that is not an object is a malformed answer."""
    from modelscope_hub.types import FileInfo

    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise TypeError(f"a file entry that is a {type(item).__name__}")
        normalised = {
            "path": item.get("Path") or item.get("path") or item.get("Name") or "",
            "size": int(item.get("Size") or item.get("size") or 0),
            "blob_id": item.get("BlobId") or item.get("blob_id") or item.get("Sha256"),
            "sha256": item.get("Sha256") or item.get("sha256"),
            "type": item.get("Type") or item.get("type") or "blob",
            "last_modified": item.get("CommittedDate") or item.get("last_modified"),
            "lfs": item.get("Lfs") or item.get("lfs"),
        }
        out.append(FileInfo.from_dict(normalised))
    return out


def _modelscope_commit(
    api: Any, repo_id: str, revision: str, repo_type: str = "model", raw: Any = None
) -> str | None:
    """The commit a ModelScope branch or tag points at, when the hub says (it may not).

    In order: a revision that is a commit; the branch or tag's entry in the revisions list, when
    it carries a commit id; else the "Revision" (a commit id, modelscope/hub/utils/caching.py)
    the file listing gives each file, when every file names the same one. Anything else (no
    answer, ids that are not 40 hex, files from several commits) is no commit: the files stay
    pinned by their sha256, and the record says nothing it does not know.
    """
    if COMMIT_RE.match(revision):
        return revision
    try:
        branches, tags = api.legacy.list_revisions_detail(repo_id, repo_type)
    except Exception:  # noqa: BLE001 - optional detail; the files are pinned by sha256 anyway
        branches, tags = [], []
    for entry in [*(branches or []), *(tags or [])]:
        if isinstance(entry, dict) and entry.get("Revision") == revision:
            commit = entry.get("CommitId") or entry.get("Commit") or entry.get("Sha")
            if isinstance(commit, str) and COMMIT_RE.match(commit):
                return commit
    named = {
        item.get("Revision")
        for item in (raw if isinstance(raw, list) else [])
        if isinstance(item, dict) and (item.get("Type") or "blob") != "tree"
    }
    if len(named) == 1:
        (commit,) = named
        if isinstance(commit, str) and COMMIT_RE.match(commit):
            return commit
    return None


# --- a local folder ------------------------------------------------------------------------------


def local_listing(
    source: Source, repo_id: str, revision: str | None, repo_type: str = "model"
) -> Listing:
    """A folder as a source: a Hugging Face cache holding the repo, or the model's files.

    From a cache, the commit is the cache's; a plain folder has none, so its snapshot is named
    after the content (sha1 over the paths and sha256s), 40 hex digits like a commit.
    """
    root = Path(source.endpoint)
    folder_name = f"{repo_type}s--" + repo_id.replace("/", "--")
    for cache in (root, root / "hub"):
        storage = cache / folder_name
        if storage.is_dir():
            return _from_hf_cache(source, storage, repo_id, revision or "main")
    folder = root / repo_id if (root / repo_id).is_dir() else root
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".cache/") or rel.startswith(".git/"):
            continue
        files.append(RemoteFile(rel, path.stat().st_size, file_sha256(path), lfs=True, origin=path))
    if not files:
        raise ProvisionError(f"Source folder {folder} holds no files.")
    digest = hashlib.sha1(b"provision-local")
    for f in files:
        digest.update(f"\0{f.path}\0{f.sha256}".encode())
    return Listing(source, repo_id, revision or "main", digest.hexdigest(), files)


def _from_hf_cache(source: Source, storage: Path, repo_id: str, revision: str) -> Listing:
    commit = revision if COMMIT_RE.match(revision) else None
    ref = storage / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    snapshot = storage / "snapshots" / (commit or "")
    if not commit or not snapshot.is_dir():
        known = ", ".join(p.name for p in (storage / "refs").glob("*")) or "none"
        raise ProvisionError(
            f"The cache at {storage} has no snapshot for revision {revision!r}.",
            f"Revisions there: {known}.",
        )
    files = []
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        rel = path.relative_to(snapshot).as_posix()
        blob = path.resolve().name
        sha = blob if SHA256_RE.match(blob) else file_sha256(path)
        blob_id = blob if COMMIT_RE.match(blob) else None
        files.append(
            RemoteFile(rel, path.stat().st_size, sha, blob_id, lfs=blob_id is None, origin=path)
        )
    return Listing(source, repo_id, revision, commit, files)


# --- choosing files ------------------------------------------------------------------------------


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)


def select(
    listing: Listing, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[RemoteFile]:
    """The files to fetch: --include globs keep, --exclude globs drop (trailing /: a folder)."""
    chosen = [
        f
        for f in listing.files
        if (not include or _matches(f.path, include))
        and not (exclude and _matches(f.path, exclude))
    ]
    if not chosen:
        shown = ", ".join(f.path for f in listing.files[:8])
        raise ProvisionError(
            f"No file of {listing.repo_id} matches --include {include or []} "
            f"--exclude {exclude or []}.",
            f"The repository has: {shown}{' ...' if len(listing.files) > 8 else ''}",
        )
    for f in chosen:
        check_path(listing.repo_id, f.path)
    return chosen


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_path(repo_id: str, path: str) -> str:
    """Refuse a repository path that could leave the snapshot folder (.., absolute, odd bytes)."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or _DRIVE.match(path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise unsafe_path(repo_id, path)
    return path
