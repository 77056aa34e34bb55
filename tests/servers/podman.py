"""A container engine for tests: podman's Docker-compatible service; images without a registry.

No Docker engine runs on the test machines and no registry can be pulled from, but Debian's podman
can serve the Docker API on a unix socket (`podman system service`), which the real `docker` SDK
talks to. This module starts one such service per test session, on its own storage, configured the
way ../shared/DESIGN.md describes the machines: runc (not crun), cgroupfs, events to a file, and
open-file / process limits of 1024 inside containers.

Base images come from `debootstrap`: a minimal Debian bookworm (python3.11, the version of the CPU
torch wheel in /opt/wheels) made into a root-filesystem tarball once and kept in a cache folder
(`PROVISION_TEST_CACHE`, default ~/.cache/provision-tests), so CI pays for it once per run and a
developer once per machine. Importing the tarball into a fresh session's storage takes about a
second. The `uv` image (what `ghcr.io/astral-sh/uv` is to a connected build) is `FROM scratch`
plus the uv binary of the project's own `uv` package.

Each session gets its own podman storage and temporary files in a temporary folder, removed at
the end: several test sessions (engineers running the suite side by side) then never see or
remove each other's containers and images, and no imported image's copy is left in /var/tmp.

Standalone, to build the cached base tarball ahead of time (as .ci/run does):

    python -m tests.servers.podman --prepare-base
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the base image holds: the smallest Debian that runs python3.11 (no pip, no venv module:
# uv creates the environments), plus ca-certificates so a connected build could reach an index.
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "ca-certificates")
DEBIAN_MIRROR = os.environ.get("PROVISION_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_REPO = "localhost/provision-test-base"
UV_REPO = "localhost/provision-test-uv"

# Trimmed from the root filesystem: package caches and lists, documentation, translations.
# Nothing here is needed to run Python or to build on top of the image.
TRIM = (
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)

CONTAINERS_CONF = """\
# Written by tests/servers/podman.py for one test session's podman service.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def cache_dir() -> Path:
    return Path(
        os.environ.get("PROVISION_TEST_CACHE") or Path.home() / ".cache" / "provision-tests"
    ).expanduser()


def missing_tools() -> list[str]:
    """The host programs this module needs that are not installed (.ci/run installs them)."""
    tools = ("podman", "runc", "debootstrap", "docker-registry")
    return [tool for tool in tools if not shutil.which(tool)]


@dataclass
class PodmanService:
    """A running `podman system service` on a unix socket, with its own storage."""

    workdir: Path
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path
    timings: dict[str, float] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: int = 600) -> Any:
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI against this service's storage (for what the API does not expose)."""
        return subprocess.run(
            [*_podman_base(self.workdir), *args],
            env=_env(self.workdir),
            capture_output=True,
            text=True,
            check=check,
        )

    def ensure_alive(self) -> None:
        """Start the service again (same storage, same socket) if it died since the last call.

        podman 4.3's service has been seen to exit between two builds, after one that failed on
        purpose, with nothing in its log; the images and cache are in the storage, so a restart
        is transparent to the tests. Each restart is kept in `restarts` (and printed), so a
        session that needed one says so.
        """
        if self.process.poll() is None:
            return
        tail = self.log.read_text(errors="replace")[-2000:]
        self.restarts.append(f"exit {self.process.returncode}; log tail:\n{tail}")
        print(f"podman service died (exit {self.process.returncode}); restarting it", flush=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = _spawn(self.workdir)
        _wait(self, 60)

    def stop(self, remove_storage: bool = True) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if remove_storage:
            # Containers are removed by the tests; what may still be mounted is unmounted first.
            with contextlib.suppress(Exception):
                self.podman("rm", "--all", "--force", check=False)
                self.podman("unshare", "true", check=False)
            _unmount_under(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)


def _podman_base(workdir: Path) -> list[str]:
    return [
        "podman",
        "--root",
        str(workdir / "storage"),
        "--runroot",
        str(workdir / "run"),
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]


def _env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CONTAINERS_CONF": str(workdir / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(workdir / "registries.conf"),
        # podman 4.3 keeps a copy of every image imported through the API in $TMPDIR (default
        # /var/tmp) and never deletes it (~120 MB a run); here it goes with the storage. (Build
        # contexts are still unpacked in /var/tmp, but podman removes those after each build.)
        "TMPDIR": str(workdir / "tmp"),
    }


def _unmount_under(root: Path) -> None:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def start_service(
    workdir: Path, timeout: float = 60, insecure_registries: tuple[str, ...] = ()
) -> PodmanService:
    """Start `podman system service` with storage under `workdir`; wait until the API answers.

    `insecure_registries` ("localhost:PORT") are registries the engine may reach over plain HTTP
    (the local test registry); no other registry is searched for short names.
    """
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    (workdir / "containers.conf").write_text(CONTAINERS_CONF)
    conf = ["unqualified-search-registries = []"]
    for location in insecure_registries:
        conf += ["", "[[registry]]", f'location = "{location}"', "insecure = true"]
    (workdir / "registries.conf").write_text("\n".join(conf) + "\n")
    started = time.monotonic()
    service = PodmanService(
        workdir, _spawn(workdir), workdir / "podman.sock", workdir / "service.log"
    )
    _wait(service, timeout)
    service.timings["service_start_s"] = time.monotonic() - started
    return service


def _spawn(workdir: Path) -> subprocess.Popen[bytes]:
    sock = workdir / "podman.sock"
    with (workdir / "service.log").open("ab") as out:
        return subprocess.Popen(
            [*_podman_base(workdir), "system", "service", "--time", "0", f"unix://{sock}"],
            env=_env(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(service: PodmanService, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if service.process.poll() is not None:
            tail = service.log.read_text(errors="replace")[-4000:]
            code = service.process.returncode
            raise RuntimeError(f"podman system service exited ({code}):\n{tail}")
        if service.socket.exists():
            with contextlib.suppress(Exception):
                if service.client(timeout=5).ping():
                    return
        if time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(
                f"podman service did not answer on {service.socket} in {timeout:.0f}s"
            )
        time.sleep(0.1)


# --- the base image ------------------------------------------------------------------------


def base_key() -> str:
    """Names the tarball after what goes into it, so a changed package list builds a new one."""
    spec = json.dumps([DEBIAN_SUITE, "minbase", sorted(DEBIAN_PACKAGES), TRIM], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def base_tag() -> str:
    return f"{BASE_REPO}:{DEBIAN_SUITE}-py311-{base_key()}"


def base_tarball(cache: Path | None = None) -> tuple[Path, float]:
    """The cached root-filesystem tarball, made with debootstrap if missing: (path, seconds spent).

    Guarded by a file lock: two sessions starting together build it once.
    """
    from filelock import FileLock

    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"debian-{DEBIAN_SUITE}-{base_key()}.tar"
    started = time.monotonic()
    with FileLock(str(tarball) + ".lock"):
        if tarball.exists():
            return tarball, 0.0
        with tempfile.TemporaryDirectory(dir=cache, prefix=".debootstrap-") as tmp:
            root = Path(tmp) / "root"
            cmd = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                DEBIAN_SUITE,
                str(root),
                DEBIAN_MIRROR,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr)[-4000:]
                raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{tail}")
            for rel in TRIM:
                target = root / rel
                if target.is_dir():
                    for child in target.iterdir():
                        if child.name in ("partial", "lock", "locale.alias"):
                            continue
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
                elif target.exists():
                    target.unlink()
            partial = Path(tmp) / "rootfs.tar"
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True
            )
            os.replace(partial, tarball)
    return tarball, time.monotonic() - started


def ensure_base_image(client: Any, cache: Path | None = None) -> tuple[str, dict[str, float]]:
    """Import the cached Debian tarball as `base_tag()` unless the engine has it: (tag, timings)."""
    tag = base_tag()
    timings: dict[str, float] = {}
    with contextlib.suppress(Exception):
        client.images.get(tag)
        return tag, timings
    tarball, timings["debootstrap_s"] = base_tarball(cache)
    started = time.monotonic()
    repo, _, version = tag.rpartition(":")
    result = client.api.import_image(
        src=str(tarball),
        repository=repo,
        tag=version,
        changes=[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["/bin/bash"]',
        ],
    )
    image_id = json.loads(result.splitlines()[-1])["id"] if isinstance(result, str) else None
    image = client.images.get(image_id) if image_id else None
    # podman 4.3's compat import ignores `tag` and names the image `<repo>:latest`; tag it as
    # asked and drop the `latest` name, which nothing here may depend on.
    if image is not None and tag not in image.tags:
        image.tag(repo, version)
    for name in client.images.get(tag).tags:
        if name.endswith(":latest"):
            client.images.remove(name)
    timings["import_s"] = time.monotonic() - started
    return tag, timings


def ensure_uv_image(client: Any) -> str:
    """`FROM scratch` + the project's uv binary at /uv: local stand-in for ghcr.io/astral-sh/uv."""
    from importlib.metadata import version

    from uv import find_uv_bin

    tag = f"{UV_REPO}:{version('uv')}"
    with contextlib.suppress(Exception):
        client.images.get(tag)
        return tag
    with tempfile.TemporaryDirectory(prefix="uv-image-") as tmp:
        shutil.copy2(find_uv_bin(), Path(tmp) / "uv")
        (Path(tmp) / "Dockerfile").write_text("FROM scratch\nCOPY uv /uv\n")
        client.images.build(path=tmp, tag=tag, rm=True)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-base", action="store_true", help="build the cached tarball")
    args = parser.parse_args(argv)
    if args.prepare_base:
        missing = missing_tools()
        if missing:
            print(f"missing: {', '.join(missing)}", file=sys.stderr)
            return 2
        path, seconds = base_tarball()
        size = path.stat().st_size / 2**20
        print(f"{path} ({size:.0f} MiB, built in {seconds:.1f} s; 0 means it was cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
