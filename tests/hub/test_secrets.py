"""No password from a mirror or find-links URL is written, shown, or put on a command line
(issue 11, item 3). Each check looks where the secret used to appear."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from provision.lock.indexes import Index, IndexConfig
from provision.lock.resolve import RequirementSet, compile_command, resolve
from provision.secrets import public, redact, redact_text
from tests.cli_helpers import invoke, invoke_json

PASSWORD = "pw-n0t-f0r-fi1es"


def _with_password(url: str) -> str:
    return url.replace("http://", f"http://alice:{PASSWORD}@")


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_redaction_forms():
    url = f"https://alice:{PASSWORD}@mirror.example:8443/simple?x=1"
    assert public(url) == "https://mirror.example:8443/simple?x=1"
    assert redact(url) == "https://***@mirror.example:8443/simple?x=1"
    assert PASSWORD not in redact_text(f"GET {url} failed; also http://bob:x@h/")
    assert public("https://hf-mirror.com") == "https://hf-mirror.com"


def test_download_through_a_mirror_url_with_a_password_writes_and_shows_none(hub, tiny, tmp_path):
    source = _with_password(hub.url)
    proc = invoke("--json", "download", "tiny", "--source", source)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    lock = (tmp_path / "locks" / "pylock.tiny.toml").read_text()
    assert f'endpoint = "{hub.url}"' in lock and PASSWORD not in lock
    for path in _files_under(tmp_path / "hf"):
        assert PASSWORD.encode() not in path.read_bytes(), path
    # An error path quotes the source too: still no password.
    hub.stop()
    failed = invoke("download", "tiny", "--source", source, "--revision", "v9")
    assert failed.returncode == 2 and PASSWORD not in failed.stdout + failed.stderr


def test_a_malformed_source_url_is_one_message_without_the_password(hub, tiny):
    # An unclosed IPv6 bracket: the HTTP client raised InvalidURL at the first request, a
    # traceback quoting the URL's port; now one message at parse time, exit 2.
    for args in (("download", "tiny"), ("--json", "download", "tiny")):
        proc = invoke(*args, "--source", f"https://alice:{PASSWORD}@[::1")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert "Traceback" not in out and PASSWORD not in out
        assert "https://***@[::1" in out and "is not a URL" in out


def test_env_persist_and_docker_endpoint_leave_the_password_out(hub, tiny, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "VIRTUAL_ENV": ""}
    source = _with_password(hub.url)
    proc = invoke("env", "--source", source, "--shell", "bash", "--persist", env=env)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    rc = (home / ".bashrc").read_text()
    assert f"export HF_ENDPOINT={hub.url}" in rc and PASSWORD not in rc
    rc_json, out = invoke_json("env", "--source", source, env=env)
    assert rc_json == 0 and out["env"]["HF_ENDPOINT"] == hub.url


class _SlowIndex(BaseHTTPRequestHandler):
    """A find-links page that takes its time: uv stays alive until it has been looked at (the
    test's watcher sets `looked_at`; 5 s at most), rather than a fixed wait per request."""

    seen_auth: list[str] = []
    looked_at = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        type(self).looked_at.wait(5)
        body = b"<html><body></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _argv_of_all_processes() -> list[list[str]]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            found.append(raw.decode(errors="replace").split("\0"))
    return found


def test_find_links_password_reaches_uv_through_its_environment_not_argv(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowIndex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    link = f"http://alice:{PASSWORD}@127.0.0.1:{server.server_address[1]}/wheels/"
    indexes = IndexConfig(
        Index("default", f"http://127.0.0.1:{server.server_address[1]}/simple", "test"),
        find_links=[(link, "PIP_FIND_LINKS")],
    )
    secrets: dict[str, str] = {}
    command = compile_command("3.11", "x86_64-manylinux_2_28", indexes, secrets)
    assert PASSWORD not in " ".join(command) and PASSWORD in secrets["UV_FIND_LINKS"]

    seen: list[list[str]] = []
    stop = threading.Event()

    _SlowIndex.looked_at.clear()

    def watch() -> None:
        while not stop.is_set():
            found = [a for a in _argv_of_all_processes() if "compile" in a]
            seen.extend(found)
            if any(x.endswith("uv") for a in found for x in a[:1]):
                _SlowIndex.looked_at.set()  # uv's argv has been read: let it finish
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        resolve([RequirementSet("t", ("tiny-pkg-x==1.0",))], "3.11", indexes, timeout=120)
    except Exception:  # noqa: BLE001 - nothing is served: the resolution fails, uv ran
        pass
    finally:
        stop.set()
        watcher.join()
        server.shutdown()
    uv_runs = [a for a in seen if any(x.endswith("uv") for x in a[:1])]
    assert uv_runs, "uv was never seen running"
    assert not any(PASSWORD in " ".join(a) for a in seen)
    # uv did use the credentials: they reached the server as Basic auth.
    assert any(h.startswith("Basic ") for h in _SlowIndex.seen_auth), _SlowIndex.seen_auth
