"""A local container registry for tests: Debian's `docker-registry` (the CNCF distribution server).

    with Registry(tmp_path / "registry") as registry:
        registry.url           # "localhost:PORT", plain HTTP, no auth
        registry.tags("team/tiny")

The engine must be told the registry speaks HTTP: tests/servers/podman.py writes a registries.conf
marking it insecure when `start_service(..., insecure_registries=[registry.url])`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available() -> bool:
    return shutil.which("docker-registry") is not None


class Registry:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"localhost:{self.port}"

    def start(self) -> Registry:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "config.yml"
        config.write_text(CONFIG.format(root=self.folder / "data", port=self.port))
        log = (self.folder / "registry.log").open("wb")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "registry.log").read_text()[-2000:])
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=2)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def tags(self, repository: str) -> list[str]:
        url = f"http://127.0.0.1:{self.port}/v2/{repository}/tags/list"
        with urllib.request.urlopen(url, timeout=10) as response:
            return sorted(json.load(response).get("tags") or [])

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
