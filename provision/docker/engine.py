"""Talking to the container engine through the `docker` SDK: connect, build, push.

The engine is whatever DOCKER_HOST (or the SDK's default socket) points at: Docker, or podman's
Docker-compatible service. Builds go to the engine's `/build` endpoint through the SDK's own API
client, with two additions its `images.build()` cannot send:

- build secrets: podman's endpoint takes `secrets=["id=hf_token,src=FILE"]`, FILE being a member
  of the context archive that the engine moves out of the context before the build (so no COPY
  can see it) and mounts only where a step asks for it (`RUN --mount=type=secret,id=hf_token`).
  Docker's classic builder has no secrets, and BuildKit's come over a gRPC session the SDK does not
  implement, so against Docker a build that needs the token says which `docker buildx build
  --secret` command to run instead.
- a build with no network: podman's compat endpoint ignores `networkmode=none` and needs its own
  policy value (`NetworkDisabled`); Docker's takes `none`.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError

DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")
SECRET_MEMBER = ".provision-secret-{id}"
START_HINT = (
    "Start an engine and point DOCKER_HOST at it: Docker (`sudo systemctl start docker`, socket "
    "unix:///var/run/docker.sock), or podman's Docker-compatible service "
    "(`podman system service --time 0 unix:///run/podman/podman.sock &` then "
    "`export DOCKER_HOST=unix:///run/podman/podman.sock`)."
)


@dataclass
class Engine:
    client: Any
    host: str
    kind: str  # "podman" or "docker"
    version: str
    api_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "kind": self.kind,
            "version": self.version,
            "api_version": self.api_version,
        }


def candidate_hosts() -> list[str]:
    """DOCKER_HOST when set; else Docker's socket, then podman's (root, then rootless)."""
    if os.environ.get("DOCKER_HOST"):
        return [os.environ["DOCKER_HOST"]]
    sockets = list(DEFAULT_SOCKETS)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        sockets.append(f"{runtime}/podman/podman.sock")
    return [f"unix://{s}" for s in sockets]


def connect(host: str | None = None, timeout: int = 3600) -> Engine:
    """The engine at `host` (default: candidate_hosts(), the first that answers)."""
    import docker

    tried = []
    for where in [host] if host else candidate_hosts():
        try:
            client = docker.DockerClient(base_url=where, timeout=timeout)
            client.ping()
            info = client.version()
        except Exception as exc:  # DockerException, or requests' connection errors as themselves
            tried.append(f"{where} ({_short(exc)})")
            continue
        names = " ".join(c.get("Name", "") for c in info.get("Components") or [])
        kind = "podman" if "podman" in names.lower() else "docker"
        version = str(info.get("Version", "?"))
        return Engine(client, where, kind, version, str(info.get("ApiVersion")))
    raise ProvisionError("No container engine answers: tried " + "; ".join(tried) + ".", START_HINT)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text[-300:]


def has_image(engine: Engine, ref: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        engine.client.images.get(ref)
    except ImageNotFound:
        return False
    return True


def ensure_image(engine: Engine, ref: str, what: str, flag: str) -> str:
    """`ref` is on the engine, pulled when missing; an unknown image is one clear message."""
    if has_image(engine, ref):
        return "present"
    from docker.errors import DockerException

    try:
        engine.client.images.pull(ref)
    except DockerException as exc:
        raise ProvisionError(
            f"The {what} {ref} is not on the engine ({engine.kind} at {engine.host}) and cannot "
            f"be pulled: {_short(exc)}",
            f"Check the name and tag, log in to its registry, or pass {flag} with an image the "
            "engine has (a registry mirror, or one loaded with `docker load`).",
        ) from exc
    return "pulled"


# --- building ----------------------------------------------------------------------------------


@dataclass
class BuildEvent:
    kind: str  # "step", "cache", "output", "error"
    text: str


@dataclass
class BuildResult:
    image_id: str
    tags: list[str]
    seconds: float
    steps: int = 0
    cached: int = 0
    output_tail: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "tags": list(self.tags),
            "seconds": round(self.seconds, 2),
            "steps": self.steps,
            "cached_steps": self.cached,
        }


_STEP = re.compile(r"^(\[\d+/\d+\] )?STEP \d+(/\d+)?: |^Step \d+/\d+ : ")
_CACHE = re.compile(r"Using cache")


class _Archive(io.RawIOBase):
    """The context tar on disk followed by in-memory members: what the engine reads as one tar.

    Secrets are only ever in the in-memory tail, so provision never writes a token to a file.
    `__len__` lets requests send a Content-Length rather than a chunked body.
    """

    def __init__(self, head: Any, head_size: int, tail: bytes) -> None:
        self._head, self._head_size, self._tail, self._pos = head, head_size, tail, 0

    def __len__(self) -> int:
        return self._head_size + len(self._tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self)}
        if whence not in bases or bases[whence] + offset < 0:
            raise ValueError(f"cannot seek to {offset} from {whence}")
        self._pos = bases[whence] + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < len(self):
            want = len(view) - done
            if self._pos < self._head_size:
                self._head.seek(self._pos)
                chunk = self._head.read(min(want, self._head_size - self._pos))
                if not chunk:
                    raise OSError("the build context archive shrank while it was being sent")
            else:
                start = self._pos - self._head_size
                chunk = self._tail[start : start + want]
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._pos += len(chunk)
        return done

    def close(self) -> None:
        self._head.close()
        super().close()


def _context_archive(context: Path, secrets: dict[str, str]) -> tuple[_Archive, list[str]]:
    """The context as the SDK would send it (its .dockerignore applied), plus secret members."""
    from docker.utils import build as build_utils

    ignore = context / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore.read_text().splitlines() if ignore.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    # Closed by the caller once the engine has read it.
    archive = tempfile.NamedTemporaryFile(prefix="provision-context-", suffix=".tar")  # noqa: SIM115
    build_utils.tar(
        str(context), exclude=patterns, dockerfile=("Dockerfile", None), fileobj=archive
    )
    size = archive.seek(0, io.SEEK_END)
    options: list[str] = []
    if not secrets:
        return _Archive(archive, size, b""), options
    # The secrets go after the SDK's last member, in place of its end-of-archive blocks.
    archive.seek(0)
    with tarfile.open(fileobj=archive, mode="r") as tar:
        size = max(
            (m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for m in tar),
            default=0,
        )
    tail = io.BytesIO()
    with tarfile.open(fileobj=tail, mode="w") as tar:
        for secret_id, value in secrets.items():
            data = value.encode("utf-8")
            member = tarfile.TarInfo(SECRET_MEMBER.format(id=secret_id))
            member.size = len(data)
            member.mode = 0o600
            tar.addfile(member, io.BytesIO(data))
            options.append(f"id={secret_id},src={member.name}")
    return _Archive(archive, size, tail.getvalue()), options


def build_image(
    engine: Engine,
    context: Path,
    tags: list[str],
    buildargs: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    network: str | None = None,
    on_event: Callable[[BuildEvent], None] | None = None,
    nocache: bool = False,
    labels: dict[str, str] | None = None,
    stages: list[str] | tuple[str, ...] = (),
) -> BuildResult:
    """Build `context` (its Dockerfile) on the engine, streaming its progress to `on_event`.

    `stages`: build these targets one call each, in order, before the whole file (each call
    reuses the layers of the one before). podman's builder runs the stages of one call side by
    side, and when one fails while another waits for it, the service itself panics
    (containers/buildah#7091); one stage per call leaves no stage waiting on one that can fail.
    """
    secrets = {k: v for k, v in (secrets or {}).items() if v}
    if secrets and engine.kind != "podman":
        ids = ",".join(secrets)
        raise ProvisionError(
            f"This build needs the secret(s) {ids}, and the docker SDK cannot pass build secrets "
            f"to {engine.kind} {engine.version} (BuildKit takes them over a session the SDK does "
            "not speak).",
            f"Build the staged context with the CLI instead: `docker buildx build --secret "
            f"id=hf_token,env=HF_TOKEN -t {tags[0]} {context}` - or use podman's service "
            "(DOCKER_HOST), which takes secrets through the same API call.",
        )
    archive, secret_options = _context_archive(context, secrets)
    params: dict[str, Any] = {
        "rm": True,
        "forcerm": True,
        "pull": False,
        "nocache": nocache,
        "dockerfile": "Dockerfile",
        "buildargs": json.dumps(buildargs or {}),
    }
    if secret_options:
        params["secrets"] = json.dumps(secret_options)
    if network == "none":
        params["networkmode"] = "NetworkDisabled" if engine.kind == "podman" else "none"
    elif network:
        params["networkmode"] = network
    final = {"t": tags}
    if labels:
        # Applied to the final image by the engine itself: a LABEL fed from a build argument would
        # be taken from podman's layer cache with the previous build's value.
        final["labels"] = json.dumps(labels)
    started = time.monotonic()
    result = BuildResult(image_id="", tags=list(tags), seconds=0.0)
    try:
        for stage in stages:
            _emit(on_event, BuildEvent("step", f"== stage {stage} =="))
            _one_call(engine, archive, {**params, "target": stage}, result, on_event)
            result.image_id = ""
            params["nocache"] = False  # the stages just built are the cache of the next call
        if stages:
            _emit(on_event, BuildEvent("step", "== image =="))
        _one_call(engine, archive, {**params, **final}, result, on_event)
    finally:
        archive.close()
    result.seconds = time.monotonic() - started
    return result


def _one_call(
    engine: Engine,
    archive: Any,
    params: dict[str, Any],
    result: BuildResult,
    on_event: Callable[[BuildEvent], None] | None,
) -> None:
    api = engine.client.api
    error: str | None = None
    archive.seek(0)
    try:
        # The SDK's own session and helpers, for the parameters images.build() does not expose.
        response = api._post(
            api._url("/build"),
            data=archive,
            params=params,
            headers={"Content-Type": "application/x-tar"},
            stream=True,
            timeout=None,
        )
        api._raise_for_status(response)
        for chunk in _events(api._stream_helper(response, decode=True)):
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                error = str(chunk.get("error") or detail.get("message") or chunk)
                _emit(on_event, BuildEvent("error", error))
                continue
            if "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                result.image_id = chunk["aux"]["ID"]
                continue
            for line in str(chunk.get("stream", "")).splitlines():
                if not line.strip():
                    continue
                result.output_tail = (result.output_tail + [line])[-40:]
                if _STEP.search(line):
                    result.steps += 1
                    _emit(on_event, BuildEvent("step", line))
                elif _CACHE.search(line):
                    result.cached += 1
                    _emit(on_event, BuildEvent("cache", line))
                else:
                    _emit(on_event, BuildEvent("output", line))
    except ProvisionError:
        raise
    except Exception as exc:
        raise ProvisionError(
            f"The build failed to run on {engine.kind} at {engine.host}: {_short(exc)}",
            "Check the engine is still up (`docker info`), then build again.",
        ) from exc
    if error or not result.image_id:
        tail = "\n".join(result.output_tail[-15:])
        hint = (
            "The step above says what broke; fix it and build again (layers already built are "
            "reused)."
        )
        if engine.kind == "podman" and not _still_answers(engine):
            hint += (
                f" Note: the podman service at {engine.host} stopped after this failure (podman's "
                "builder panics when a stage fails while another waits for it, "
                "containers/buildah#7091); start it again before the next build: "
                "`podman system service --time 0 " + engine.host + " &`."
            )
        raise ProvisionError(
            f"The image build failed: {error or 'the engine reported no image'}\n{tail}", hint
        )


def _still_answers(engine: Engine, wait: float = 3.0) -> bool:
    """Whether the engine still answers a moment after a failed build."""
    deadline = time.monotonic() + wait
    while True:
        try:
            engine.client.ping()
        except Exception:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.5)


def _events(stream: Iterator[Any]) -> Iterator[dict[str, Any]]:
    for chunk in stream:
        if isinstance(chunk, dict):
            yield chunk


def _emit(callback: Callable[[BuildEvent], None] | None, event: BuildEvent) -> None:
    if callback is not None:
        callback(event)


# --- pushing -----------------------------------------------------------------------------------


def registry_of(tag: str) -> str | None:
    """The registry host a tag names (registry.example.com/team/x:1 -> registry.example.com)."""
    first, _, rest = tag.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def check_pushable(tag: str) -> str:
    """The registry host `tag` names; a tag that names none (it would go to Docker Hub) is
    refused."""
    registry = registry_of(tag)
    if registry is None:
        raise ProvisionError(
            f"--push: the tag {tag} names no registry, so it would go to Docker Hub.",
            "Tag it for your registry: --tag registry.example.com/team/NAME:TAG --push.",
        )
    return registry


def push_image(
    engine: Engine, tag: str, on_event: Callable[[BuildEvent], None] | None = None
) -> dict[str, Any]:
    """Push `tag` to the registry it names; a tag with no registry host is refused."""
    registry = check_pushable(tag)
    repository, _, version = tag.rpartition(":")
    from docker.errors import DockerException

    status: list[str] = []
    try:
        for chunk in engine.client.images.push(repository, version, stream=True, decode=True):
            if chunk.get("error"):
                raise ProvisionError(
                    f"Pushing {tag} to {registry} failed: {chunk['error']}",
                    f"Log in first (`docker login {registry}`) and check the repository exists.",
                )
            text = chunk.get("status") or chunk.get("stream") or ""
            if text:
                status.append(str(text).strip())
                _emit(on_event, BuildEvent("output", str(text).strip()))
    except DockerException as exc:
        raise ProvisionError(
            f"Pushing {tag} to {registry} failed: {_short(exc)}",
            f"Log in first (`docker login {registry}`) and check the registry answers.",
        ) from exc
    return {"tag": tag, "registry": registry, "status": status[-3:]}
