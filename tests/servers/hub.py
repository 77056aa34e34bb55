"""A local model hub for tests: the Hugging Face and ModelScope routes the real clients use.

The public hubs are not reachable from the test machines, so the real `huggingface_hub` 2.4 and
`modelscope` 1.40 clients (and our downloader) are pointed at this server with `HF_ENDPOINT` /
`MODELSCOPE_ENDPOINT`. It serves repositories published from folders, answers with the headers the
clients need (see ../shared/reference/hub-protocol.md, checked against the clients' source), and
can misbehave on purpose: cut a transfer after N bytes, answer 5xx for the first K requests or for
a while, send wrong bytes, throttle. It counts the file bytes it sends, per file.

In-process:

    with HubServer(tmp_path / "hub") as hub:
        sha = hub.add_repo("tiny/model", folder)
        hub.fault("*.safetensors", cut_after=1_000_000, times=1)
        os.environ["HF_ENDPOINT"] = hub.url
        ...
        assert hub.bytes_for("tiny/model/model.safetensors") == size

Standalone (other tests, container e2e):

    python -m tests.servers.hub ROOT --port 8123 [--gated org/name] [--token T]

serves every folder ROOT/<org>/<name> as repository org/name (revision "main"), prints its URL on
the first line of stdout, and takes faults and repositories over HTTP while running:
`POST /_hub/faults` (JSON, the keyword arguments of `HubServer.fault`), `POST /_hub/faults/clear`,
`POST /_hub/repos` ({"repo_id", "folder", "revision", "gated", "repo_type"}), `POST /_hub/reset`,
`GET /_hub/stats` (bytes sent, per path, request count).

Datasets (`add_repo(..., repo_type="dataset")`) are served on the hubs' dataset routes, as the
real clients ask them (huggingface_hub 2.4 hf_api.dataset_info / list_repo_tree / hf_hub_url;
modelscope-hub 0.5 _legacy_api.list_dataset_files_paginated / get_repo_info /
list_revisions_detail / file URL): `/api/datasets/{id}/revision/{rev}`, `/api/datasets/{id}/tree/
{rev}`, `/datasets/{id}/resolve/{rev}/{path}`; `/api/v1/datasets/{id}`, `.../revisions`,
`.../repo/tree?Revision=&Recursive=&PageNumber=&PageSize=` (paged) and `.../repo?FilePath=`.
A dataset and a model may share an id: they are separate repositories, as on the hubs.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files stored in git LFS on the real hub: the suffixes the hub's default .gitattributes lists,
# plus anything of 10 MiB or more (the hub refuses larger plain-git files).
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".msgpack", ".h5",
    ".model", ".npy", ".npz", ".zip", ".tar", ".gz", ".pkl", ".pickle", ".tflite",
)  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024
SEND_BLOCK = 1024 * 1024  # sendfile() step: bytes_sent stays current while a big file streams
MS_NOT_FOUND = 10010205001  # ModelScope's business code for "model not found"


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str
    git_oid: str  # the blob id git gives the file (or its LFS pointer)
    lfs: bool
    pointer_size: int
    object_path: Path

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class HubRepo:
    repo_id: str
    gated: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    default: str = "main"
    granted: set[str] = field(default_factory=set)  # tokens that passed the gate

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        if revision in self.refs:
            return self.refs[revision]
        if revision in ("main", "master") and self.default in self.refs:
            return self.refs[self.default]  # each hub's name for the default branch
        return None


@dataclass
class Fault:
    """One injected misbehaviour, for requests whose file path, repo path or URL path match.

    Status faults (`fail_first`, `fail_for`) answer `status` to any method on any route;
    body faults (`cut_after`, `corrupt`, `throttle`) act on file-content GETs only.
    Answer faults change what a JSON route says: `answer` replaces the whole JSON body, `edit`
    (in-process only) is called with the parsed body and returns the one to send (hostile or
    malformed listings: an etag that is a path, a size that is a string, a tree that is no list).
    `redirect` answers 302 to that location (a path on this server, or a URL): pointing a route
    at itself makes a redirect loop.
    `times` limits how many requests a body fault touches (None: all of them); `skip` lets the
    first matching requests through untouched (e.g. fail only after a first partial transfer).
    """

    pattern: str
    cut_after: int | None = None  # bytes of the body sent before the connection is dropped
    fail_first: int | None = None  # answer `status` to the next K matching requests
    fail_for: float | None = None  # answer `status` for this many seconds from now
    status: int = 503
    corrupt: bool = False  # flip one byte in the middle of the body
    throttle: int | None = None  # bytes per second
    answer: Any = None  # the JSON body sent instead of the real one
    edit: Callable[[Any], Any] | None = None  # the real JSON body in, the one to send out
    redirect: str | None = None  # answer 302 with this Location
    times: int | None = None
    skip: int = 0
    hits: int = 0
    seen: int = 0
    created: float = field(default_factory=time.monotonic)

    def matches(self, keys: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(key, self.pattern) for key in keys if key)

    def status_now(self) -> bool:
        if self.redirect is not None:
            return self.times is None or self.hits < self.times
        if self.fail_first is not None and self.hits < self.fail_first:
            return True
        return self.fail_for is not None and time.monotonic() - self.created < self.fail_for

    @property
    def body_fault(self) -> bool:
        return self.cut_after is not None or self.corrupt or self.throttle is not None

    @property
    def answer_fault(self) -> bool:
        return self.answer is not None or self.edit is not None

    def body_active(self) -> bool:
        return self.body_fault and (self.times is None or self.hits < self.times)


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int = 0
    range: str | None = None
    file: str | None = None  # "<repo_id>/<path>" for file-content routes
    sent: int = 0  # file bytes written to the socket
    time: float = field(default_factory=time.time)
    done: bool = False  # the handler finished with it (a killed client's is done once noticed)


def _hash_file(path: Path, head_only: bool = False) -> tuple[str, str, int]:
    """sha256 of the content and git's blob sha1 (over "blob <size>\\0" + content); with
    `head_only`, digests of the first MiB and the size (a stand-in, for sparse test files)."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    if head_only:
        with path.open("rb") as handle:
            head = b"unhashed\0%d\0" % size + handle.read(1024 * 1024)
        return hashlib.sha256(head).hexdigest(), hashlib.sha1(head).hexdigest(), size
    with path.open("rb") as handle:
        while block := handle.read(4 * 1024 * 1024):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest(), size


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a redirect loop given up, a killed download) is what these tests
    do on purpose: no traceback for it on stderr, where in-process CLI tests look for tracebacks
    of provision's own."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class HubServer:
    """Serves repositories over HTTP on 127.0.0.1 (a random port unless `port` is given)."""

    def __init__(
        self,
        root: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.objects = self.root / ".hub-objects"
        self.objects.mkdir(exist_ok=True)
        self.host = host
        self.port = port
        self.tree_page_size = 1000  # entries per /tree page (the hub's own cap)
        self.tokens = set(tokens)  # tokens granted access to every gated repo
        self.repos: dict[str, HubRepo] = {}
        self.datasets: dict[str, HubRepo] = {}  # dataset repositories (their own namespace)
        self.faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        handler = type("BoundHubHandler", (_Handler,), {"hub": self})
        self._httpd = _QuietServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content -----------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        folder: Path | str,
        revision: str = "main",
        gated: bool = False,
        extra_files: dict[str, bytes] | None = None,
        unhashed: tuple[str, ...] = (),
        repo_type: str = "model",
    ) -> str:
        """Publish every file under `folder` as `revision` of `repo_id`; returns the commit sha.

        `extra_files` adds files by raw name (e.g. a name that tries to escape the cache).
        `unhashed` (glob patterns) marks sparse files whose bodies no test downloads (metadata
        tests: real headers, holes for bodies): their sha256 stands for the header and size only,
        so publishing a 16 GB sparse checkpoint does not read 16 GB of zeros.
        The commit sha is derived from the content, so publishing the same folder twice gives
        the same commit.
        """
        if repo_id.count("/") != 1:
            raise ValueError(f"repo_id must look like org/name, got {repo_id!r}")
        folder = Path(folder)
        files: dict[str, HubFile] = {}
        sources = [
            (p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()
        ]
        for name, data in (extra_files or {}).items():
            tmp = self.objects / f"extra-{hashlib.sha256(data).hexdigest()}"
            tmp.write_bytes(data)
            sources.append((name, tmp))
        for rel, path in sources:
            files[rel] = self._store(rel, path, any(fnmatch.fnmatchcase(rel, p) for p in unhashed))
        digest = hashlib.sha1(repo_id.encode())
        for rel in sorted(files):
            digest.update(f"\0{rel}\0{files[rel].git_oid}".encode())
        sha = digest.hexdigest()
        if repo_type not in ("model", "dataset"):
            raise ValueError(f"repo_type must be model or dataset, got {repo_type!r}")
        space = self.datasets if repo_type == "dataset" else self.repos
        with self._lock:
            repo = space.get(repo_id)
            if repo is None:
                repo = space[repo_id] = HubRepo(repo_id, gated=gated, default=revision)
            repo.gated = repo.gated or gated
            repo.commits[sha] = files
            repo.refs[revision] = sha
        return sha

    def _store(self, rel: str, path: Path, unhashed: bool = False) -> HubFile:
        sha256, git_sha1, size = _hash_file(path, head_only=unhashed)
        target = self.objects / sha256
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            try:
                os.link(path, tmp)  # the benchmark's files are big: share them when possible
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        lfs = rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
        pointer = _lfs_pointer(sha256, size)
        git_oid = (
            hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest() if lfs else git_sha1
        )
        return HubFile(rel, size, sha256, git_oid, lfs, len(pointer), target)

    def grant(self, token: str, repo_id: str | None = None) -> None:
        """Let `token` through the gate of `repo_id` (or of every gated repo)."""
        with self._lock:
            if repo_id is None:
                self.tokens.add(token)
            else:
                self.repos[repo_id].granted.add(token)

    # --- faults ------------------------------------------------------------------------------
    def fault(self, pattern: str, **kwargs: Any) -> Fault:
        """Add a fault for requests matching `pattern` (see `Fault`); returns it (see .hits)."""
        made = Fault(pattern, **kwargs)
        with self._lock:
            self.faults.append(made)
        return made

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # --- counters ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    @property
    def bytes_sent(self) -> int:
        """File bytes written to sockets since start (or the last reset_counters)."""
        with self._lock:
            return sum(r.sent for r in self._log)

    @property
    def bytes_sent_per_path(self) -> dict[str, int]:
        """File bytes sent, keyed "<repo_id>/<path in repo>"."""
        out: dict[str, int] = {}
        with self._lock:
            for record in self._log:
                if record.file:
                    out[record.file] = out.get(record.file, 0) + record.sent
        return out

    def bytes_for(self, pattern: str) -> int:
        """File bytes sent for files whose "<repo_id>/<path>" matches the glob `pattern`."""
        return sum(
            n for key, n in self.bytes_sent_per_path.items() if fnmatch.fnmatchcase(key, pattern)
        )

    def reset_counters(self) -> None:
        """Forget the requests so far (call wait_idle first if a client was just killed: its
        request is counted until the server notices the socket is gone)."""
        with self._lock:
            self._log.clear()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being answered."""
        deadline = time.monotonic() + timeout
        while any(not r.done for r in self.requests):
            if time.monotonic() > deadline:
                raise TimeoutError("requests still in flight")
            time.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.bytes_sent,
            "per_path": self.bytes_sent_per_path,
            "requests": [asdict(r) for r in self.requests],
        }

    # --- internals used by the handler --------------------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _status_fault(self, keys: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.body_fault or fault.answer_fault or not fault.matches(keys):
                    continue
                fault.seen += 1
                if fault.seen > fault.skip and fault.status_now():
                    fault.hits += 1
                    return fault
        return None

    def _body_faults(self, keys: tuple[str, ...]) -> list[Fault]:
        found = []
        with self._lock:
            for fault in self.faults:
                if not fault.body_fault or not fault.matches(keys):
                    continue
                fault.seen += 1
                if fault.seen > fault.skip and fault.body_active():
                    fault.hits += 1
                    found.append(fault)
        return found

    def _answer_fault(self, keys: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if not fault.answer_fault or not fault.matches(keys):
                    continue
                fault.seen += 1
                if fault.seen > fault.skip and (fault.times is None or fault.hits < fault.times):
                    fault.hits += 1
                    return fault
        return None

    def _allowed(self, repo: HubRepo, token: str | None) -> int:
        """200 when the gate lets the request through, else 401 (no token) or 403."""
        if not repo.gated:
            return 200
        if token is None:
            return 401
        with self._lock:
            return 200 if token in self.tokens or token in repo.granted else 403


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server_version = "provision-test-hub/1"
    # TCP_NODELAY, as the hubs' front servers set it (nginx's tcp_nodelay is on by default): a
    # file is sent as two writes (the headers, then the body by sendfile), and with Nagle on the
    # body waited for the client's delayed ACK of the headers, about 40 ms per file GET on
    # Linux. Every downloader paid it once per file, which hid their own per-file costs in the
    # issue 17 comparisons (benchmarks/download_files.py).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
        pass  # the request log replaces stderr noise

    # --- dispatch ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        self.record = RequestRecord(method, self.path, range=self.headers.get("Range"))
        self.keys: tuple[str, ...] = ()
        self.method = method
        self.hub._record(self.record)  # counted while it streams, not only once it ends
        try:
            self._route(method, split.path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (killed, or gave up)
        finally:
            self.record.done = True

    def _route(self, method: str, raw_path: str) -> None:
        seg = self.segments
        if seg[:1] == ["_hub"]:
            return self._control(method, seg[1:])
        file_key = None
        dataset = seg[:1] == ["datasets"] and len(seg) >= 6 and seg[3] == "resolve"
        if dataset:
            file_key = f"{seg[1]}/{seg[2]}/{'/'.join(seg[5:])}"
        elif len(seg) >= 5 and seg[2] == "resolve":
            file_key = f"{seg[0]}/{seg[1]}/{'/'.join(seg[4:])}"
        elif seg[:3] in (["api", "v1", "models"], ["api", "v1", "datasets"]) and seg[-1:] == [
            "repo"
        ]:
            file_key = (
                f"{seg[3]}/{seg[4]}/{self.query.get('FilePath', '')}" if len(seg) > 5 else None
            )
        keys = (unquote(raw_path), file_key or "", file_key.split("/", 2)[2] if file_key else "")
        self.keys = keys
        fault = self.hub._status_fault(keys)
        if fault is not None and fault.redirect is not None:
            self.record.status = 302
            self.send_response(302)
            self.send_header("Location", fault.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if fault is not None:
            self.record.file = file_key
            return self._send_json(fault.status, {"error": "injected failure"})
        if dataset and method in ("GET", "HEAD"):
            repo_id = f"{seg[1]}/{seg[2]}"
            return self._hf_resolve(repo_id, seg[4], "/".join(seg[5:]), keys, "dataset")
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._hf_resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), keys)
        if seg[:2] == ["api", "models"]:
            return self._hf_api(method, seg[2:])
        if seg[:2] == ["api", "datasets"]:
            return self._hf_api(method, seg[2:], "dataset")
        if seg[:3] == ["api", "v1", "models"]:
            return self._ms_api(method, seg[3:], keys)
        if seg[:3] == ["api", "v1", "datasets"]:
            return self._ms_api(method, seg[3:], keys, "dataset")
        if seg[:3] == ["api", "v1", "repos"]:
            return self._send_json(404, {"Code": 404, "Message": "not found", "Success": False})
        return self._send_json(404, {"error": "Not Found"})

    # --- helpers -----------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        cookie = self.headers.get("Cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "m_session_id" and value:
                return value
        return None

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        fault = self.hub._answer_fault(self.keys) if status == 200 and self.keys else None
        if fault is not None:
            payload = fault.answer if fault.edit is None else fault.edit(payload)
        body = json.dumps(payload).encode()
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.method != "HEAD":
            self.wfile.write(body)

    def _hf_error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send_json(status, {"error": message}, headers)

    def _repo(self, repo_id: str, repo_type: str = "model") -> HubRepo | None:
        with self.hub._lock:
            space = self.hub.datasets if repo_type == "dataset" else self.hub.repos
            return space.get(repo_id)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # --- Hugging Face ------------------------------------------------------------------------
    def _hf_api(self, method: str, rest: list[str], repo_type: str = "model") -> None:
        if not rest:  # GET /api/models (/api/datasets): a listing, enough for a probe
            space = self.hub.datasets if repo_type == "dataset" else self.hub.repos
            models = [{"id": r, "modelId": r} for r in sorted(space)]
            return self._send_json(200, models)
        if len(rest) < 2:
            return self._hf_error(404, "RepoNotFound", "Repository not found")
        repo_id = f"{rest[0]}/{rest[1]}"
        repo = self._repo(repo_id, repo_type)
        if repo is None:
            return self._hf_error(401, "RepoNotFound", "Repository not found")
        action = rest[2] if len(rest) > 2 else None
        revision = rest[3] if len(rest) > 3 else repo.default
        commit = repo.resolve(revision)
        if commit is None:
            return self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = repo.commits[commit]
        if action in (None, "revision") and method == "GET":
            return self._send_json(
                200,
                {
                    "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )
        if action == "tree" and method == "GET":
            return self._hf_tree(repo_id, commit, files, "/".join(rest[4:]))
        if action == "paths-info" and method == "POST":
            raw = self._read_body().decode()
            form = parse_qs(raw)
            if raw.startswith("{"):
                form = {"paths": json.loads(raw).get("paths", [])}
            wanted = set(form.get("paths", []))
            entries = [self._hf_entry(f) for p, f in sorted(files.items()) if p in wanted]
            return self._send_json(200, entries)
        return self._hf_error(404, "RepoNotFound", "Unknown route")

    @staticmethod
    def _hf_entry(f: HubFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        return entry

    def _hf_tree(self, repo_id: str, commit: str, files: dict[str, HubFile], under: str) -> None:
        recursive = self.query.get("recursive", "false").lower() == "true"
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, f in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(folder.encode()).hexdigest()
                entries.setdefault(
                    folder, {"type": "directory", "oid": oid, "size": 0, "path": folder}
                )
            if recursive or len(parts) == 1:
                entries[path] = self._hf_entry(f)
        if prefix and not entries:
            return self._hf_error(404, "EntryNotFound", f"{under} does not exist", commit)
        listing = [entries[k] for k in sorted(entries)]
        start = int(self.query.get("cursor", "0") or 0)
        page = listing[start : start + self.hub.tree_page_size]
        headers = {}
        if start + self.hub.tree_page_size < len(listing):
            base = f"{self.hub.url}{urlsplit(self.path).path}"
            nxt = f"{base}?recursive={str(recursive).lower()}&cursor={start + len(page)}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._send_json(200, page, headers)

    def _hf_resolve(
        self,
        repo_id: str,
        revision: str,
        path: str,
        keys: tuple[str, ...],
        repo_type: str = "model",
    ) -> None:
        repo = self._repo(repo_id, repo_type)
        if repo is None:
            return self._hf_error(401, "RepoNotFound", "Repository not found")
        commit = repo.resolve(revision)
        if commit is None:
            return self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        allowed = self.hub._allowed(repo, self._token())
        if allowed != 200:
            if allowed == 401:
                msg = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
            else:
                msg = (
                    f"Access to model {repo_id} is restricted and you are not in the authorized "
                    f"list. Visit {self.hub.url}/{repo_id} to ask for access."
                )
            return self._hf_error(allowed, "GatedRepo", msg, commit)
        hub_file = repo.commits[commit].get(path)
        if hub_file is None:
            return self._hf_error(404, "EntryNotFound", f"{path} does not exist", commit)
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hub_file.etag}"',
            "Accept-Ranges": "bytes",
        }
        if hub_file.lfs:
            headers["X-Linked-Etag"] = f'"{hub_file.sha256}"'
            headers["X-Linked-Size"] = str(hub_file.size)
        self._send_file(f"{repo_id}/{path}", hub_file, headers, keys)

    # --- ModelScope --------------------------------------------------------------------------
    def _ms_ok(self, data: Any) -> None:
        self._send_json(200, {"Code": 200, "Data": data, "Message": "success", "Success": True})

    def _ms_error(self, status: int, message: str, code: int = MS_NOT_FOUND) -> None:
        payload = {"Code": code, "Data": None, "Message": message, "Success": False}
        self._send_json(status, payload)

    def _ms_api(
        self, method: str, rest: list[str], keys: tuple[str, ...], repo_type: str = "model"
    ) -> None:
        if len(rest) < 2:
            return self._ms_error(404, f"{repo_type} not found")
        repo_id = f"{rest[0]}/{rest[1]}"
        repo = self._repo(repo_id, repo_type)
        if repo is None:
            return self._ms_error(404, f"{repo_type} {repo_id} not exists")
        action = "/".join(rest[2:])
        if action == "":
            return self._ms_ok({"Id": repo_id, "Name": rest[1], "Path": rest[0], "Visibility": 5})
        if action == "revisions":
            branches = [{"Revision": name, "CommitId": sha} for name, sha in repo.refs.items()]
            return self._ms_ok({"RevisionMap": {"Branches": branches, "Tags": []}})
        revision = self.query.get("Revision") or "master"
        commit = repo.resolve(revision)
        if commit is None:
            return self._ms_error(404, f"revision {revision} not exists")
        files = repo.commits[commit]
        if action == "repo/tree" and repo_type == "dataset":
            return self._ms_dataset_tree(files, commit)
        if action == "repo/files":
            return self._ms_ok({"Files": self._ms_listing(files, commit, dataset=False)})
        if action == "repo" and method in ("GET", "HEAD"):
            allowed = self.hub._allowed(repo, self._token())
            if allowed != 200:
                return self._ms_error(allowed, f"no permission to {repo_id}", code=allowed)
            path = self.query.get("FilePath", "")
            hub_file = files.get(path)
            if hub_file is None:
                return self._ms_error(404, f"file {path} not exists")
            self._send_file(f"{repo_id}/{path}", hub_file, {"Accept-Ranges": "bytes"}, keys)
            return None
        return self._ms_error(404, "unknown route")

    def _ms_listing(
        self, files: dict[str, HubFile], commit: str, dataset: bool
    ) -> list[dict[str, Any]]:
        """ModelScope's file listing under ?Root=, sorted. Models list a folder's entry even in a
        recursive listing, with a Mode per file; datasets list folders only when not recursive."""
        recursive = self.query.get("Recursive", "False").lower() == "true"
        root = self.query.get("Root", "").strip("/")
        prefix = f"{root}/" if root else ""
        listing: dict[str, dict[str, Any]] = {}
        for path, f in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if len(parts) > 1 and (not dataset or not recursive):
                folder = prefix + parts[0]
                listing.setdefault(
                    folder, {"Name": parts[0], "Path": folder, "Type": "tree", "Size": 0}
                )
                if not recursive:
                    continue
            listing[path] = {
                "Name": path.rsplit("/", 1)[-1],
                "Path": path,
                "Type": "blob",
                "Size": f.size,
                "Sha256": f.sha256,
                "Revision": commit,
                "IsLFS": f.lfs,
            } | ({} if dataset else {"Mode": "33188"})
        return [listing[k] for k in sorted(listing)]

    def _ms_dataset_tree(self, files: dict[str, HubFile], commit: str) -> None:
        """modelscope-hub pages datasets: PageNumber from 1, PageSize each, until a short page."""
        entries = self._ms_listing(files, commit, dataset=True)
        number = max(1, int(self.query.get("PageNumber", "1") or 1))
        size = max(1, int(self.query.get("PageSize", "200") or 200))
        page = entries[(number - 1) * size : number * size]
        return self._ms_ok({"Files": page, "TotalCount": len(entries)})

    # --- file bodies, with Range and faults ----------------------------------------------------
    def _send_file(
        self, key: str, hub_file: HubFile, headers: dict[str, str], keys: tuple[str, ...]
    ) -> None:
        self.record.file = key
        size = hub_file.size
        start, end = 0, size  # [start, end)
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            parsed = _parse_range(wanted, size)
            if parsed is None:
                self.record.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.method == "HEAD":
            return
        faults = self.hub._body_faults(keys)
        cut = min((f.cut_after for f in faults if f.cut_after is not None), default=None)
        rate = min((f.throttle for f in faults if f.throttle), default=None)
        corrupt = any(f.corrupt for f in faults)
        with hub_file.object_path.open("rb") as source:
            if not faults:
                self._sendfile(source, start, end)
            else:
                self._send_faulty(source, start, end, cut, rate, corrupt, size)

    def _count(self, n: int) -> None:
        with self.hub._lock:
            self.record.sent += n

    def _sendfile(self, source: Any, start: int, end: int) -> None:
        self.wfile.flush()
        offset = start
        while offset < end:
            step = min(SEND_BLOCK, end - offset)
            sent = self.connection.sendfile(source, offset=offset, count=step)
            if sent <= 0:
                raise BrokenPipeError("client closed")
            offset += sent
            self._count(sent)

    def _send_faulty(
        self,
        source: Any,
        start: int,
        end: int,
        cut: int | None,
        rate: int | None,
        corrupt: bool,
        size: int,
    ) -> None:
        flip_at = size // 2  # the byte a "corrupt" fault changes (absolute offset in the file)
        limit = end if cut is None else min(end, start + cut)
        step = 64 * 1024 if rate is None else max(1024, min(64 * 1024, rate // 20))
        began = time.monotonic()
        offset = start
        source.seek(start)
        while offset < limit:
            block = bytearray(source.read(min(step, limit - offset)))
            if corrupt and offset <= flip_at < offset + len(block):
                block[flip_at - offset] ^= 0xFF
            self.wfile.write(block)
            self.wfile.flush()
            offset += len(block)
            self._count(len(block))
            if rate:
                ahead = (offset - start) / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if offset < end:  # cut: drop the connection mid-body, as a flaky link does
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    # --- control routes (for a server run as a subprocess) ------------------------------------
    def _control(self, method: str, rest: list[str]) -> None:
        hub = self.hub
        if rest == ["stats"] and method == "GET":
            return self._send_json(200, hub.stats())
        body = json.loads(self._read_body() or b"{}") if method == "POST" else {}
        if rest == ["faults"] and method == "POST":
            made = hub.fault(**body)
            return self._send_json(200, {"pattern": made.pattern})
        if rest == ["faults", "clear"] and method == "POST":
            hub.clear_faults()
            return self._send_json(200, {"cleared": True})
        if rest == ["reset"] and method == "POST":
            hub.reset_counters()
            return self._send_json(200, {"reset": True})
        if rest == ["repos"] and method == "POST":
            sha = hub.add_repo(
                body["repo_id"],
                Path(body["folder"]),
                revision=body.get("revision", "main"),
                gated=bool(body.get("gated", False)),
                repo_type=body.get("repo_type", "model"),
            )
            return self._send_json(200, {"sha": sha})
        if rest == ["grant"] and method == "POST":
            hub.grant(body["token"], body.get("repo_id"))
            return self._send_json(200, {"granted": True})
        return self._send_json(404, {"error": "unknown control route"})


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as [start, end); None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            start, end = max(0, size - n), size
        else:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    if start >= size or start >= end:
        return None
    return start, end


def publish_tree(hub: HubServer, root: Path, gated: tuple[str, ...] = ()) -> list[str]:
    """Publish every ROOT/<org>/<name> folder as repository org/name; returns the repo ids."""
    published = []
    for org in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for repo in sorted(p for p in org.iterdir() if p.is_dir() and not p.name.startswith(".")):
            repo_id = f"{org.name}/{repo.name}"
            hub.add_repo(repo_id, repo, gated=repo_id in gated)
            published.append(repo_id)
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve ROOT/<org>/<name> folders as a model hub.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gated", action="append", default=[], help="repo id behind a gate")
    parser.add_argument("--token", action="append", default=[], help="token let through gates")
    args = parser.parse_args(argv)
    hub = HubServer(args.root, host=args.host, port=args.port, tokens=args.token)
    repos = publish_tree(hub, args.root, tuple(args.gated))
    hub.start()
    sys.stdout.write(f"{hub.url}\n")
    sys.stdout.write(f"serving {len(repos)} repositories: {', '.join(repos)}\n")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    hub.stop()
    return 0


__all__ = ["Fault", "HubFile", "HubRepo", "HubServer", "RequestRecord", "publish_tree"]

if __name__ == "__main__":
    sys.exit(main())
