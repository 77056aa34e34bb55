"""Start a planned server, wait for its health check, stop its whole process group.

The server runs in a session of its own (vLLM and LMDeploy start engine and worker processes of
their own; stopping only the first would leave them holding the GPU), so provision passes a
Ctrl-C, SIGTERM or SIGHUP on to the whole group itself (provision.procs).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import CheckFailed, ProvisionError
from provision.procs import exit_on_signals, stop_group
from provision.serve.plan import ServePlan, plan_serve, process_env

DEFAULT_TIMEOUT = 1800.0  # a 70B model on slow disks loads for many minutes
LOG_LINES = 20


class ServeFailed(CheckFailed):
    """The server died while loading or never answered its health check (exit 1)."""


@dataclass
class Server:
    """A started server: its plan, its process (the group leader) and its log file."""

    plan: ServePlan
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.plan.base_url

    def log_tail(self, lines: int = LOG_LINES) -> str:
        try:
            data = self.log_path.read_bytes()[-64_000:]
        except OSError:
            return ""
        from provision.secrets import redact_text

        text = redact_text(data.decode("utf-8", "replace"))
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def stop(self) -> None:
        """Stop the whole group: SIGTERM, then SIGKILL what is left (provision.procs)."""
        stop_group(self.proc)


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (a bind the server would fail)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ProvisionError(
            f"--host {host}: not an address of this machine ({exc.strerror}).",
            "Pass 127.0.0.1 (this machine only) or 0.0.0.0 (every interface).",
        ) from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the servers do (uvicorn, http.server): a port in TIME_WAIT is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_log(plan: ServePlan) -> Path:
    from provision.settings import resolve_data_dir

    folder = resolve_data_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"serve-{plan.profile}-{plan.port}.log"


def start(
    plan: ServePlan, timeout: float = DEFAULT_TIMEOUT, log_path: Path | None = None
) -> Server:
    """Start `plan`'s server and return once its health check answers 200.

    A port already in use is a ProvisionError (exit 2) before anything starts; a server that
    exits while loading, or does not answer within `timeout` seconds, is ServeFailed (exit 1)
    with its last log lines, and nothing of it is left running.
    """
    if plan.environment is None:
        raise ProvisionError(f"No environment to serve {plan.profile} from.")
    if port_in_use(plan.host, plan.port):
        raise ProvisionError(
            f"Port {plan.port} on {plan.host} is in use: another server listens there.",
            f"Pass another --port, or stop what listens on it (`ss -ltnp 'sport = :{plan.port}'`).",
        )
    log_path = log_path or default_log(plan)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            plan.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=process_env(plan),
            cwd=tempfile.gettempdir(),  # nothing in the caller's folder shadows the env's packages
            start_new_session=True,
        )
    server = Server(plan, proc, log_path)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, timeout: float) -> None:
    plan = server.plan
    deadline = time.monotonic() + timeout
    while True:
        code = server.proc.poll()
        if code is not None:
            raise ServeFailed(
                f"The {plan.stack} server for {plan.repo_id} exited with code {code} while "
                f"loading. Its last log lines ({server.log_path}):\n{server.log_tail()}",
                f"Fix what the log says, then run `provision serve {plan.profile}` again.",
            )
        if _healthy(plan.health_url):
            return
        if time.monotonic() > deadline:
            raise ServeFailed(
                f"The {plan.stack} server for {plan.repo_id} did not answer {plan.health_url} "
                f"within {timeout:g} s and was stopped. Its last log lines "
                f"({server.log_path}):\n{server.log_tail()}",
                "Give it longer with --timeout, or read the whole log.",
            )
        time.sleep(0.25)


# The server is local: a proxy from the environment (AutoDL's network_turbo sets http_proxy)
# must not carry the health check away.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve_until_stopped(
    plan: ServePlan,
    on_ready: Callable[[Server], None],
    timeout: float = DEFAULT_TIMEOUT,
    log_path: Path | None = None,
) -> int:
    """Start the server, call `on_ready`, and wait until Ctrl-C / SIGTERM / SIGHUP (returns
    130 / raises SystemExit) or until the server ends by itself (ServeFailed with its log).
    Whatever ends the wait, the server's whole process group is stopped."""
    with exit_on_signals():
        try:
            server = start(plan, timeout, log_path)
        except KeyboardInterrupt:
            return 130
        try:
            on_ready(server)
            code = server.proc.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            server.stop()
    raise ServeFailed(
        f"The {plan.stack} server exited with code {code}. Its last log lines "
        f"({server.log_path}):\n{server.log_tail()}"
    )


@contextlib.contextmanager
def served(
    profile: str,
    *,
    stack: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Path | None = None,
    lock: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log_path: Path | None = None,
    **plan_options: Any,
) -> Iterator[Server]:
    """Serve `profile` for the block: yields the running Server (`.base_url` is the OpenAI
    base URL, e.g. http://127.0.0.1:PORT/v1) and stops its whole process group on leaving.

        with served("qwen2-vl-2b", stack="transformers") as server:
            post(server.base_url + "/chat/completions", ...)

    `port` None picks a free one. Raises as `start` does."""
    plan = plan_serve(
        profile,
        stack=stack,
        host=host,
        port=port or free_port(host),
        env=env,
        lock=lock,
        **plan_options,
    )
    if log_path is None:
        folder = Path(tempfile.mkdtemp(prefix="provision-serve-"))
        log_path = folder / "server.log"
    server = start(plan, timeout, log_path)
    try:
        yield server
    finally:
        server.stop()
