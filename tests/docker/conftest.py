"""Fixtures for the Docker tests: one podman service for this package, a base image made locally.

Package-scoped, not session-scoped: the engine's storage (images with torch installed, a few GB)
and the registry's blobs are removed as soon as the Docker tests are done, not held while the
rest of the suite builds its environments."""

from __future__ import annotations

import os
import shutil
import time
import warnings

import pytest

from tests.servers import podman
from tests.servers.registry import Registry, free_port


@pytest.fixture(scope="package")
def registry_port() -> int:
    return free_port()


@pytest.fixture(scope="package")
def engine(tmp_path_factory: pytest.TempPathFactory, registry_port: int):
    """The Docker tests' podman service (Docker API on a unix socket), its storage removed after.

    The tests need podman, runc and debootstrap on the host (.ci/run installs them); without them
    they fail with that message rather than skip, so CI cannot go green without building images.
    """
    missing = podman.missing_tools()
    if missing:
        pytest.fail(
            f"The Docker tests need {', '.join(missing)} on this machine: "
            "`scripts/install-test-deps` (as the test command in docs/testing.md runs it)."
        )
    service = podman.start_service(
        tmp_path_factory.mktemp("podman"), insecure_registries=(f"localhost:{registry_port}",)
    )
    yield service
    # A restart keeps the session going but may hide a regression (the per-stage builds exist so
    # that containers/buildah#7091 cannot kill the service): shown in pytest's warnings summary.
    for restart in service.restarts:
        warnings.warn(f"the podman service had to be restarted: {restart}", stacklevel=1)
    service.stop()


@pytest.fixture(scope="package")
def docker_env(engine) -> dict[str, str]:
    """Environment that points the docker SDK (and `provision docker --build`) at the service."""
    return {**os.environ, "DOCKER_HOST": engine.docker_host}


@pytest.fixture(scope="package")
def client(engine):
    return engine.client()


@pytest.fixture(scope="package")
def base_image(client, engine) -> str:
    """A Debian bookworm + python3.11 image made with debootstrap (cached) and imported here."""
    started = time.monotonic()
    tag, timings = podman.ensure_base_image(client)
    engine.timings.update(timings, base_image_s=time.monotonic() - started)
    return tag


@pytest.fixture(scope="package")
def uv_image(client) -> str:
    return podman.ensure_uv_image(client)


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory, registry_port: int, engine):
    """A local registry (plain HTTP on localhost:PORT) the engine may push to."""
    root = tmp_path_factory.mktemp("registry")
    with Registry(root, registry_port) as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _engine_alive(request: pytest.FixtureRequest) -> None:
    """Before a test that uses the engine: restart podman's service if a failed build killed it
    (see PodmanService.ensure_alive and containers/buildah#7091)."""
    if {"engine", "client", "docker_env"} & set(request.fixturenames):
        request.getfixturevalue("engine").ensure_alive()
