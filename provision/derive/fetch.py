"""Reading a repository's metadata without its weights: file list, small files, byte ranges.

Three kinds of place, one interface (`Repo`): a hub that speaks the Hugging Face protocol (the
Hub, hf-mirror, any HF-compatible URL), ModelScope's /api/v1, and a local model folder. Requests
go through urllib (no hub client import: a cold derivation stays light); every request is counted
in `Repo.requests` so tests and benchmarks can hold the request budget (one listing, the config
files, two Range reads per safetensors shard at most).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from provision.errors import ProvisionError
from provision.secrets import credentials, public

TIMEOUT = 15.0
SMALL_FILE_LIMIT = 20 * 1024 * 1024  # a config or index larger than this is refused
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


def safe_path(path: Any) -> bool:
    """A repository-relative file name that cannot leave its folder."""
    if not isinstance(path, str) or not path or len(path) > 1000 or "\\" in path or "\0" in path:
        return False
    parts = PurePosixPath(path).parts
    return not path.startswith("/") and ".." not in parts and "." not in parts


@dataclass
class Repo:
    """One repository at one revision, as a place to read metadata from."""

    repo_id: str
    revision: str
    where: str  # how messages name the place (source name, URL or folder)
    commit: str = ""  # set by list_files(): the commit (or a digest of the listing)
    kind: str = "hf"
    gated: bool = False
    files: dict[str, int | None] = field(default_factory=dict)
    requests: int = 0

    def list_files(self) -> dict[str, int | None]:
        raise NotImplementedError

    def get(self, path: str) -> bytes | None:
        """A small file's bytes, or None when the repository has no such file."""
        raise NotImplementedError

    def read_range(self, path: str, start: int, end: int) -> tuple[bytes, int | None]:
        """Bytes start..end (inclusive) of a file, and the file's size when the answer says it."""
        raise NotImplementedError

    def get_json(self, path: str) -> dict | None:
        raw = self.get(path)
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProvisionError(
                f"{path} in {self.repo_id} ({self.where}) is not valid JSON ({exc}).",
                "The repository's file is broken; try another revision or source.",
            ) from exc
        if not isinstance(data, dict):
            raise ProvisionError(
                f"{path} in {self.repo_id} ({self.where}) is not a JSON object.",
                "The repository's file is broken; try another revision or source.",
            )
        return data


# --- HTTP ------------------------------------------------------------------------------------


class _Http:
    def __init__(self, repo: Repo, headers: dict[str, str]) -> None:
        self.repo = repo
        self.headers = headers

    def open(self, url: str, extra: dict[str, str] | None = None) -> Any:
        from provision.hub.sources import USER_AGENT

        request = urllib.request.Request(
            url, headers={"User-Agent": USER_AGENT, **self.headers, **(extra or {})}
        )
        self.repo.requests += 1
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            return exc  # the caller reads the status and headers
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UnreachableError(
                f"Cannot reach {self.repo.where} for {self.repo.repo_id}: {reason}.",
                "Check the network or the source (HF_ENDPOINT, --source), or use --offline with "
                "a cache from an earlier run.",
            ) from None


def _read_limited(answer: Any, limit: int, what: str) -> bytes:
    data = answer.read(limit + 1)
    if len(data) > limit:
        raise ProvisionError(
            f"{what} is larger than {limit} bytes.", "That is not a config file; check the source."
        )
    return data


def _total_from(answer: Any) -> int | None:
    content_range = answer.headers.get("Content-Range") or ""
    match = re.match(r"bytes \d+-\d+/(\d+)$", content_range.strip())
    if match:
        return int(match.group(1))
    if answer.status == 200 and answer.headers.get("Content-Length", "").isdigit():
        return int(answer.headers["Content-Length"])
    return None


def _a_dataset(repo_id: str, where: str, prefix: str = "") -> ProvisionError:
    return ProvisionError(
        f"{repo_id} is a dataset on {where}, not a model.",
        f"Fetch it with: provision download --dataset {prefix}{repo_id} (docs/datasets.md).",
    )


class _HttpRepo(Repo):
    """What the two hub protocols share: a file's URL, a message for an answer, Range reads."""

    http: _Http

    def _has_dataset(self, url: str) -> bool:
        """Does the hub answer for a dataset of this id (asked once a model was not found)?"""
        try:
            answer = self.http.open(url)
        except ProvisionError:
            return False
        status = answer.status if hasattr(answer, "status") else answer.code
        body: Any = None
        with contextlib.suppress(Exception):
            if status == 200:
                body = json.loads(answer.read(64 * 1024 + 1)[: 64 * 1024].decode("utf-8"))
        with contextlib.suppress(Exception):
            answer.close()
        # The hub's own answer for a dataset: Hugging Face's info has its id and commit,
        # ModelScope's envelope says Success (it may answer 200 with Success false).
        return isinstance(body, dict) and (body.get("Success") is True or "sha" in body)

    def _url(self, path: str) -> str:
        raise NotImplementedError

    def _error(self, answer: Any, path: str | None) -> ProvisionError:
        status = answer.status if hasattr(answer, "status") else answer.code
        return ProvisionError(
            f"{self.where} answered {status} for {self.repo_id}"
            + (f" {path}" if path else "")
            + ".",
            "Try again later or use another source.",
        )

    def read_range(self, path: str, start: int, end: int) -> tuple[bytes, int | None]:
        answer = self.http.open(self._url(path), {"Range": f"bytes={start}-{end}"})
        known = self.files.get(path)  # the listing's size, where it gives one (ModelScope)
        if answer.status == 416:  # the file is shorter than `start`
            return b"", known
        if answer.status not in (200, 206):
            raise self._error(answer, path)
        total = _total_from(answer) or known
        if answer.status == 200:  # no Range support: read only what was asked for
            data = answer.read(end + 1)[start:]
            answer.close()
            return data, total
        return _read_limited(answer, end - start + 1, f"A range of {path}"), total


class HfRepo(_HttpRepo):
    """The Hugging Face protocol: /api/models/{repo}/revision/{rev} and
    /{repo}/resolve/{commit}/{path}."""

    def __init__(self, repo_id: str, revision: str, endpoint: str, where: str, token: str | None):
        super().__init__(repo_id, revision, where)
        self.endpoint = public(endpoint.rstrip("/"))
        self.token = token
        auth = f"Bearer {token}" if token else _basic_auth(endpoint)
        self.http = _Http(self, {"Authorization": auth} if auth else {})

    def _error(self, answer: Any, path: str | None) -> ProvisionError:
        code = answer.headers.get("X-Error-Code", "")
        status = answer.status if hasattr(answer, "status") else answer.code
        if code == "GatedRepo" or (path and status in (401, 403) and code != "RepoNotFound"):
            from provision.hub.errors import gated_message
            from provision.hub.sources import parse_source

            try:
                page = parse_source(self.where).license_page(self.repo_id)
            except ProvisionError:
                page = f"{self.endpoint}/{self.repo_id}"
            return gated_message(self.repo_id, page, self.token is not None)
        if code == "RevisionNotFound":
            return ProvisionError(
                f"{self.repo_id} has no revision '{self.revision}' on {self.where}.",
                "Use a branch, tag or commit the repository has (org/name@revision).",
            )
        if code == "RepoNotFound" or status in (401, 404):
            if not path and self._has_dataset(f"{self.endpoint}/api/datasets/{self.repo_id}"):
                return _a_dataset(self.repo_id, self.where)
            return ProvisionError(
                f"No repository {self.repo_id} on {self.where}.",
                "Check the spelling (org/name); a private repository needs HF_TOKEN. "
                f"For a dataset: provision download --dataset {self.repo_id}",
            )
        return super()._error(answer, path)

    def list_files(self) -> dict[str, int | None]:
        url = f"{self.endpoint}/api/models/{self.repo_id}/revision/{quote(self.revision, safe='')}"
        answer = self.http.open(url)
        if answer.status != 200:
            raise self._error(answer, None)
        try:
            info = json.loads(_read_limited(answer, SMALL_FILE_LIMIT, "The repository listing"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProvisionError(
                f"{self.where} sent a listing for {self.repo_id} that is not JSON.",
                "The endpoint does not speak the Hugging Face API; check HF_ENDPOINT / --source.",
            ) from exc
        sha = info.get("sha") if isinstance(info, dict) else None
        siblings = info.get("siblings") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not COMMIT_RE.match(sha) or not isinstance(siblings, list):
            raise ProvisionError(
                f"{self.where} sent a listing for {self.repo_id} without a commit or file list.",
                "The endpoint does not speak the Hugging Face API; check HF_ENDPOINT / --source.",
            )
        files: dict[str, int | None] = {}
        for entry in siblings:
            name = entry.get("rfilename") if isinstance(entry, dict) else None
            if not safe_path(name):
                raise ProvisionError(
                    f"{self.where} listed a file name for {self.repo_id} that is not a safe "
                    f"relative path: {str(name)[:80]!r}.",
                    "Do not use this source for this repository.",
                )
            files[name] = None
        self.commit, self.files = sha, files
        self.gated = bool(info.get("gated"))
        return files

    def _url(self, path: str) -> str:
        return f"{self.endpoint}/{self.repo_id}/resolve/{self.commit}/{quote(path)}"

    def get(self, path: str) -> bytes | None:
        answer = self.http.open(self._url(path))
        if answer.status == 404 and answer.headers.get("X-Error-Code") == "EntryNotFound":
            return None
        if answer.status != 200:
            raise self._error(answer, path)
        return _read_limited(answer, SMALL_FILE_LIMIT, f"{path} in {self.repo_id}")


class ModelScopeRepo(_HttpRepo):
    """ModelScope's /api/v1/models/{repo}/repo/files and /repo?FilePath= (Range answered 206)."""

    def __init__(self, repo_id: str, revision: str, endpoint: str, where: str, token: str | None):
        super().__init__(repo_id, revision, where)
        self.kind = "modelscope"
        self.endpoint = endpoint.rstrip("/")
        self.http = _Http(self, {"Cookie": f"m_session_id={token}"} if token else {})

    def _error(self, answer: Any, path: str | None) -> ProvisionError:
        status = answer.status if hasattr(answer, "status") else answer.code
        if status in (401, 403) and path:
            return ProvisionError(
                f"{self.repo_id} on {self.where} refuses its files without access.",
                "Accept the model's terms on ModelScope and set MODELSCOPE_API_TOKEN.",
            )
        if status == 404 and not path:
            if self._has_dataset(f"{self.endpoint}/api/v1/datasets/{self.repo_id}"):
                return _a_dataset(self.repo_id, self.where, "modelscope:")
            return ProvisionError(
                f"No repository {self.repo_id} (revision {self.revision}) on {self.where}.",
                "Check the spelling (org/name) and the revision. For a dataset: "
                f"provision download --dataset modelscope:{self.repo_id}",
            )
        return super()._error(answer, path)

    def list_files(self) -> dict[str, int | None]:
        url = (
            f"{self.endpoint}/api/v1/models/{self.repo_id}/repo/files"
            f"?Revision={quote(self.revision, safe='')}&Recursive=True"
        )
        answer = self.http.open(url)
        if answer.status != 200:
            raise self._error(answer, None)
        try:
            payload = json.loads(_read_limited(answer, SMALL_FILE_LIMIT, "The listing"))
            entries = payload["Data"]["Files"]
            assert isinstance(entries, list)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise ProvisionError(
                f"{self.where} sent a listing for {self.repo_id} in an unknown shape.",
                "The endpoint does not speak ModelScope's API; check MODELSCOPE_ENDPOINT.",
            ) from exc
        files: dict[str, int | None] = {}
        digest = hashlib.sha256(self.repo_id.encode())
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("Type") != "blob":
                continue
            name, size = entry.get("Path"), entry.get("Size")
            if not safe_path(name):
                raise ProvisionError(
                    f"{self.where} listed an unsafe file name for {self.repo_id}: "
                    f"{str(name)[:80]!r}.",
                    "Do not use this source for this repository.",
                )
            files[name] = size if isinstance(size, int) and size >= 0 else None
            digest.update(f"\0{name}\0{entry.get('Sha256', '')}".encode())
        # ModelScope names a snapshot by its revision string; the listing's content stands in for
        # a commit so that a changed repository gets a new cache entry.
        revisions = {e.get("Revision") for e in entries if isinstance(e, dict)}
        one = revisions.pop() if len(revisions) == 1 else None
        self.commit = (
            one if isinstance(one, str) and COMMIT_RE.match(one) else digest.hexdigest()[:40]
        )
        self.files = files
        return files

    def _url(self, path: str) -> str:
        return (
            f"{self.endpoint}/api/v1/models/{self.repo_id}/repo"
            f"?Revision={quote(self.revision, safe='')}&FilePath={quote(path, safe='')}"
        )

    def get(self, path: str) -> bytes | None:
        if path not in self.files:
            return None
        answer = self.http.open(self._url(path))
        if answer.status != 200:
            raise self._error(answer, path)
        return _read_limited(answer, SMALL_FILE_LIMIT, f"{path} in {self.repo_id}")


class LocalRepo(Repo):
    """A model folder on disk (a save_pretrained folder or a hub snapshot)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder), "local", str(folder))
        self.kind = "local"
        self.folder = folder

    def list_files(self) -> dict[str, int | None]:
        files: dict[str, int | None] = {}
        digest = hashlib.sha256()
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(self.folder).as_posix()
                stat = path.stat()
                files[rel] = stat.st_size
                digest.update(f"\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        self.commit = "local-" + digest.hexdigest()[:34]
        self.files = files
        return files

    def get(self, path: str) -> bytes | None:
        target = self.folder / path
        if not target.is_file():
            return None
        self.requests += 1
        with target.open("rb") as handle:
            return _read_limited(handle, SMALL_FILE_LIMIT, str(target))

    def read_range(self, path: str, start: int, end: int) -> tuple[bytes, int | None]:
        target = self.folder / path
        self.requests += 1
        with target.open("rb") as handle:
            handle.seek(start)
            return handle.read(end - start + 1), os.fstat(handle.fileno()).st_size


def _basic_auth(url: str) -> str | None:
    """The user:password a URL carries as a Basic Authorization value; None without."""
    pair = credentials(url)
    if pair is None:
        return None
    import base64

    return "Basic " + base64.b64encode(":".join(pair).encode()).decode()


class UnreachableError(ProvisionError):
    """The source did not answer at all (the next source may)."""

    code = "unreachable"


def hub_repos(repo_id: str, revision: str | None, source: str | None) -> list[Repo]:
    """`source` alone, or every source of the default order (HF_ENDPOINT first)."""
    if source:
        return [hub_repo(repo_id, revision, source)]
    from provision.hub.sources import auto_candidates

    return [hub_repo(repo_id, revision, c.name) for c in auto_candidates()]


def hub_repo(repo_id: str, revision: str | None, source: str | None) -> Repo:
    """A Repo for `repo_id` on `source` (a source name, URL or `modelscope:URL`; None: the first
    of HF_ENDPOINT / PROVISION_SOURCES / the table's order)."""
    from provision.hub.listing import hf_token, modelscope_token
    from provision.hub.sources import auto_candidates, parse_source

    chosen = parse_source(source) if source else auto_candidates()[0]
    if chosen.kind == "local":
        return LocalRepo(Path(chosen.endpoint))
    if chosen.kind == "modelscope":
        return ModelScopeRepo(
            repo_id, revision or "master", chosen.endpoint, chosen.name, modelscope_token()
        )
    # Source.name is already without credentials; request_url keeps them for Basic auth.
    token = hf_token() or None
    return HfRepo(repo_id, revision or "main", chosen.request_url, chosen.name, token)
