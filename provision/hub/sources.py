"""Weight sources: the hub, its mirrors, ModelScope, a local folder; and picking one that answers.

A source is named on the command line (`hf`, `hf-mirror`, `modelscope`, an HF-compatible URL,
`modelscope:URL`, or a folder). `--source auto` probes the candidates concurrently with a short
timeout and takes the first good answer for the repository (a preferred source answering within a
moment of it goes first; a hanging one is not waited for); the others stay in line as fallbacks
should a transfer keep failing.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import __version__
from provision.errors import ProvisionError
from provision.resources import load_table

SOURCES_ENV = "PROVISION_SOURCES"
PROBE_TIMEOUT_ENV = "PROVISION_PROBE_TIMEOUT"
USER_AGENT = f"provision/{__version__}"


@functools.lru_cache(maxsize=1)
def source_table() -> dict[str, Any]:
    """provision/data/hub_sources.toml: known sources, auto order, AutoDL facts."""
    return load_table("hub_sources.toml")


@dataclass(frozen=True)
class Source:
    """Where weights come from. `kind` says which protocol: hf, modelscope or local."""

    name: str  # what the user typed or the table's name: hf, hf-mirror, modelscope, a URL, a path
    kind: str
    endpoint: str  # base URL without a trailing slash or credentials; the folder for a local one
    # The endpoint with the user:password@ it was given with: requests only, never written/shown.
    secret_url: str | None = field(default=None, repr=False, compare=False)

    @property
    def request_url(self) -> str:
        """The base URL requests go to (credentials included, when the user gave some)."""
        return self.secret_url or self.endpoint

    @property
    def is_default_modelscope(self) -> bool:
        return self.kind == "modelscope" and self.endpoint == _table_endpoint("modelscope")

    def page(self, repo_id: str, repo_type: str = "model") -> str:
        """The repository's web page on this source (where a gated license is accepted)."""
        known = source_table()["sources"].get(self.name)
        if repo_type == "dataset":
            if known and "dataset_page" in known:
                return known["dataset_page"].format(repo=repo_id)
            return f"{self.endpoint}/datasets/{repo_id}"
        if known and "page" in known:
            return known["page"].format(repo=repo_id)
        if self.kind == "modelscope":
            return f"{self.endpoint}/models/{repo_id}"
        return f"{self.endpoint}/{repo_id}"

    def license_page(self, repo_id: str, repo_type: str = "model") -> str:
        known = source_table()["sources"].get(self.name, {})
        key = "license_page" if repo_type == "model" else f"{repo_type}_license_page"
        if key in known:
            return known[key].format(repo=repo_id)
        return self.page(repo_id, repo_type)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "endpoint": self.endpoint}


def _table_endpoint(name: str) -> str:
    return source_table()["sources"][name]["endpoint"]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.sep in spec or Path(spec).is_dir()


def _url_source(name: str, kind: str, url: str) -> Source:
    """A source from a URL: credentials in it are kept for requests only (provision.secrets).
    A URL the HTTP client could not read (no host, a bad port, an unclosed IPv6 bracket) is one
    message here, not a traceback at the first request; the message shows it without a password.
    """
    from urllib.parse import urlsplit

    from provision.secrets import has_credentials, public, redact

    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed or out-of-range port raises ValueError when read
        readable = bool(parts.hostname)
    except ValueError:
        readable = False
    if not readable:
        raise ProvisionError(
            f"Source {redact(url)!r} is not a URL that can be reached: its host or port is "
            "malformed.",
            "Give scheme://[user:password@]host[:port][/path], e.g. https://hf-mirror.com or "
            "http://[::1]:8080 (an IPv6 host goes in brackets).",
        )
    bare = public(url)
    return Source(name.format(bare), kind, bare, url if has_credentials(url) else None)


def parse_source(spec: str) -> Source:
    """A source from what the user typed; a clear message for anything else."""
    spec = spec.strip()
    spec = source_table().get("aliases", {}).get(spec, spec)
    known = source_table()["sources"]
    if spec in known:
        entry = known[spec]
        endpoint = entry["endpoint"]
        if spec == "modelscope" and os.environ.get("MODELSCOPE_ENDPOINT"):
            endpoint = os.environ["MODELSCOPE_ENDPOINT"]  # the user's own ModelScope endpoint
            return _url_source(spec, entry["kind"], endpoint.rstrip("/"))
        return Source(spec, entry["kind"], endpoint.rstrip("/"))
    if spec.startswith("modelscope:"):
        url = spec.split(":", 1)[1]
        if not url.startswith(("http://", "https://")):
            raise ProvisionError(
                f"Source {spec!r}: after 'modelscope:' comes the endpoint URL.",
                "e.g. --source modelscope:https://www.modelscope.cn",
            )
        return _url_source("modelscope:{}", "modelscope", url.rstrip("/"))
    if spec.startswith(("http://", "https://")):
        return _url_source("{}", "hf", spec.rstrip("/"))
    if _looks_like_path(spec):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ProvisionError(
                f"Source folder {folder} does not exist.",
                "Pass a folder holding the model's files (or a Hugging Face cache), or a hub name.",
            )
        return Source("local", "local", str(folder.resolve()))
    names = ", ".join([*known, "auto"])
    raise ProvisionError(
        f"Unknown source {spec!r}.",
        f"Use one of {names}, an HF-compatible URL (https://...), modelscope:URL, or a folder.",
    )


def auto_candidates(has_modelscope: bool = True) -> list[Source]:
    """Sources `auto` tries, preferred first: HF_ENDPOINT if set, then PROVISION_SOURCES/table."""
    order = os.environ.get(SOURCES_ENV)
    specs = [s for s in order.split(",") if s.strip()] if order else source_table()["auto_order"]
    found: list[Source] = []
    if os.environ.get("HF_ENDPOINT") and not order:
        endpoint = os.environ["HF_ENDPOINT"].rstrip("/")
        named = [n for n, e in source_table()["sources"].items() if e["endpoint"] == endpoint]
        found.append(parse_source(named[0] if named else endpoint))
    for spec in specs:
        source = parse_source(spec)
        if source.kind == "modelscope" and not has_modelscope:
            continue
        if all(s.endpoint != source.endpoint or s.kind != source.kind for s in found):
            found.append(source)
    if not found:
        raise ProvisionError(
            f"No source to try: {SOURCES_ENV}={order!r} names none this profile can use.",
            "List hf, hf-mirror, modelscope or URLs there, comma-separated.",
        )
    return found


# --- probing -----------------------------------------------------------------------------------


@dataclass
class Probe:
    source: Source
    ok: bool
    detail: str  # "answered in 41 ms", "timed out after 3.0 s", "no repository org/x there"
    elapsed: float = 0.0
    status: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source.name,
            "endpoint": self.source.endpoint,
            "ok": self.ok,
            "detail": self.detail,
            "elapsed_ms": round(self.elapsed * 1000),
        }


def http_client(timeout: float | None = None, **kwargs: Any) -> Any:
    """An httpx2 client (installed with huggingface_hub): proxies from the environment, as
    AutoDL's network_turbo sets them."""
    import httpx2

    spec = transfer_timeout() if timeout is None else httpx2.Timeout(timeout)
    headers = {"User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    return httpx2.Client(follow_redirects=True, timeout=spec, headers=headers, **kwargs)


def transfer_timeout() -> Any:
    """How long a file transfer waits: 15 s to connect, 60 s for each read or write."""
    import httpx2

    return httpx2.Timeout(connect=15.0, read=60.0, write=60.0, pool=None)


def transfer_client(source: Source) -> tuple[Any, bool]:
    """The client a download's files come through, and whether the caller must close it.

    A Hugging Face source's files go through huggingface_hub's own shared client (`get_session`),
    the one its listing has just used: the listing's connection to the hub is reused, a client
    factory the user set (`set_client_factory`: proxies, a CA bundle) applies to the files as
    to the listing, and no second TLS context is built (a CA bundle loaded again: ~50 ms of
    CPU per run, at every file count; issue 17). That client sets no timeout and no
    User-Agent of its own: `Fetcher` passes them with each request. ModelScope sources get a
    client of ours."""
    if source.kind == "hf":
        from huggingface_hub.utils import get_session

        return get_session(), False
    return http_client(), True


def probe(
    source: Source,
    repo_id: str | None = None,
    revision: str | None = None,
    timeout: float = 3.0,
    repo_type: str = "model",
) -> Probe:
    """Does `source` answer, as the hub it claims to be, and does it have `repo_id`?
    (`repo_type` "dataset": asked on the hubs' dataset routes.)"""
    started = time.monotonic()
    if source.kind == "local":
        ok = Path(source.endpoint).is_dir()
        return Probe(source, ok, "folder exists" if ok else "folder missing")
    import httpx2

    kind = f"{repo_type}s"
    if source.kind == "hf":
        rev = revision or "main"
        path = f"/api/{kind}/{repo_id}/revision/{rev}" if repo_id else f"/api/{kind}?limit=1"
    else:
        path = f"/api/v1/{kind}/{repo_id}" if repo_id else f"/api/v1/{kind}?PageSize=1"
    try:
        with http_client(timeout) as client:
            response = client.get(source.request_url + path)
    except httpx2.TimeoutException:
        return Probe(source, False, f"timed out after {timeout:g} s", time.monotonic() - started)
    except httpx2.HTTPError as exc:
        return Probe(source, False, f"unreachable ({_short(exc)})", time.monotonic() - started)
    elapsed = time.monotonic() - started
    return _judge(source, repo_id, response, elapsed)


def _judge(source: Source, repo_id: str | None, response: Any, elapsed: float) -> Probe:
    status = response.status_code
    ms = f"{elapsed * 1000:.0f} ms"
    try:
        body = response.json()
    except ValueError:
        body = None
    if source.kind == "hf":
        code = response.headers.get("X-Error-Code")
        if status == 200 and (repo_id is None or (isinstance(body, dict) and "sha" in body)):
            return Probe(source, True, f"answered in {ms}", elapsed, status)
        if code == "RepoNotFound":
            return Probe(source, False, f"has no repository {repo_id}", elapsed, status)
        if code == "RevisionNotFound":
            return Probe(source, False, f"has {repo_id} but not that revision", elapsed, status)
        if status >= 500:
            return Probe(source, False, f"answered {status} (server error)", elapsed, status)
        kind = response.headers.get("Content-Type", "?").split(";")[0]
        return Probe(source, False, f"is not a Hugging Face hub ({status} {kind})", elapsed, status)
    if isinstance(body, dict) and body.get("Success") is True:
        return Probe(source, True, f"answered in {ms}", elapsed, status)
    if status >= 500:
        return Probe(source, False, f"answered {status} (server error)", elapsed, status)
    if isinstance(body, dict) and "Code" in body:
        return Probe(source, False, f"has no repository {repo_id}", elapsed, status)
    return Probe(source, False, f"is not a ModelScope hub ({status})", elapsed, status)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


@dataclass
class Choice:
    """The source taken, why, and the ones left to fall back on (probed reachable, in order)."""

    source: Source
    reason: str
    probes: list[Probe] = field(default_factory=list)
    pending: list[tuple[Source, Future[Probe]]] = field(default_factory=list, repr=False)

    def fallbacks(self) -> list[Source]:
        """The other sources that answered too, in order (waits for probes still running)."""
        out = []
        for source, future in self.pending:
            try:
                result = future.result()
            except Exception:  # noqa: BLE001 - a probe that crashed is a source we skip
                continue
            if result not in self.probes:
                self.probes.append(result)
            if result.ok:
                out.append(source)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source.to_json(),
            "reason": self.reason,
            "probes": [p.to_json() for p in self.probes],
        }


def _in_thread(fn: Any, *args: Any) -> Future[Any]:
    """`fn(*args)` in a daemon thread: a probe of a hanging source must not hold the process at
    exit (a ThreadPoolExecutor's workers are joined at exit, so `provision env` would print its
    answer at once and then wait the whole probe timeout before returning)."""
    future: Future[Any] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(exc)

    threading.Thread(target=run, name="probe", daemon=True).start()
    return future


PROBE_GRACE_S = 0.25  # after the first good answer, how long a preferred source may still answer


def choose_source(
    candidates: list[Source],
    repo_ids: dict[str, str | None] | None = None,
    revision: str | None = None,
    timeout: float | None = None,
    repo_type: str = "model",
) -> Choice:
    """Probe all candidates at once (threads) and take the first good answer.

    A source earlier in the order that answers within PROBE_GRACE_S of that first good answer
    is taken instead (the order is a preference), but a source that hangs is not waited for:
    the choice comes a moment after the fastest good answer, not after the probe timeout. The
    sources that answer later stay in line as fallbacks. `repo_ids` maps a source kind (hf,
    modelscope, local) to the repository to look for there.
    """
    if timeout is None:
        from provision.variables import env_value

        timeout = env_value(PROBE_TIMEOUT_ENV)
    repo_ids = repo_ids or {}
    started = time.monotonic()
    futures = [
        (
            s,
            _in_thread(probe, s, repo_ids.get(s.kind), _rev_for(s, revision), timeout, repo_type),
        )
        for s in candidates
    ]
    index_of = {future: i for i, (_s, future) in enumerate(futures)}
    results: dict[int, Probe] = {}
    deadline = started + timeout + 2.0
    grace_end: float | None = None
    while len(results) < len(futures):
        ok = [i for i, r in results.items() if r.ok]
        if ok and all(j in results for j in range(min(ok))):
            break  # the most preferred source that answered well has no better one pending
        limit = deadline if grace_end is None else min(grace_end, deadline)
        left = limit - time.monotonic()
        if left <= 0:
            break
        running = [f for f, i in index_of.items() if i not in results]
        done, _ = wait(running, timeout=left, return_when=FIRST_COMPLETED)
        for future in done:
            i = index_of[future]
            try:
                results[i] = future.result()
            except Exception as exc:  # noqa: BLE001 - a probe that crashed is a source we skip
                results[i] = Probe(futures[i][0], False, f"probe failed ({_short(exc)})")
            if results[i].ok and grace_end is None:
                grace_end = time.monotonic() + PROBE_GRACE_S
    waited = time.monotonic() - started
    ok = [i for i, r in results.items() if r.ok]
    if ok:
        chosen = min(ok)
        source, result = futures[chosen][0], results[chosen]
        order = ", ".join(s.name for s, _ in futures)
        others = "; ".join(
            f"{futures[j][0].name} {results[j].detail}"
            if j in results
            else f"{futures[j][0].name} no answer yet after {waited * 1000:.0f} ms"
            for j in range(chosen)
        )
        reason = f"{source.name} {result.detail}, first reachable in the order {order}"
        if others:
            reason += f" ({others})"
        probes = [results[i] for i in sorted(results)]
        pending = [(s, f) for i, (s, f) in enumerate(futures) if i != chosen]
        return Choice(source, reason, probes, pending)
    for i, (source, _future) in enumerate(futures):
        results.setdefault(i, Probe(source, False, f"timed out after {timeout:g} s"))
    detail = "; ".join(
        f"{results[i].source.name} ({results[i].source.endpoint}) {results[i].detail}"
        for i in sorted(results)
    )
    raise ProvisionError(
        f"No source answered for this {repo_type}: {detail}.",
        "Check the network (on AutoDL: `source /etc/network_turbo`), pick one with --source, "
        f"or set {SOURCES_ENV} (e.g. hf-mirror,modelscope) or {PROBE_TIMEOUT_ENV} (seconds).",
    )


def _rev_for(source: Source, revision: str | None) -> str | None:
    if source.kind == "hf":
        return revision
    return None  # ModelScope's repo info route takes no revision
