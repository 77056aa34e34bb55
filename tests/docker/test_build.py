"""Real images: a tiny CPU profile built through the docker SDK on podman, run with no network.

This module builds, in order (each step reuses what the one before left in the engine's cache):

1. the default image (weights mounted at run time), every package from a wheelhouse fetched on
   this machine and the build itself with no network (`--offline`);
2. a tiny random Qwen2-VL made by that image's own transformers (a container), published gated
   on the local hub and downloaded by `provision download` into a Hugging Face cache, which
   records its commit and hashes in the lock;
3. the baked image: weights downloaded inside the build from the local hub with the token as a
   build secret (the hub refuses requests without it);
4. a new checkpoint (another seed) on the hub, downloaded, baked again: only the weights change.

Containers run with network_mode="none".
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from provision.docker.build import docker_profile
from provision.docker.engine import BuildEvent, build_image, connect
from provision.errors import ProvisionError
from provision.hub.download import download_profile
from provision.lock.locking import lock_profile
from provision.profiles import load_profile
from tests.docker.helpers import write_profile
from tests.envs.helpers import sha256_file, torch_wheel_dir
from tests.servers.hub import HubServer

pytestmark = pytest.mark.slow

REPO = "tiny-org/tiny-qwen2-vl"
TOKEN = "hf_provisionTest" + secrets.token_hex(12)
PACKAGES = ("torch==2.13.0", "transformers==4.51.3", "pillow", "accelerate==1.6.0")
TESTS_DIR = Path(__file__).resolve().parent.parent
TIMINGS: dict[str, float] = {}


@contextmanager
def environ(**values: str):
    with mock.patch.dict(os.environ, values):
        yield


def local_torch_index(root: Path) -> str:
    """A one-package PEP 503 index for the CPU torch wheel of this machine (PIP_FIND_LINKS)."""
    wheel = next(torch_wheel_dir().glob("torch-2.13.0*.whl"))
    page = root / "torch-index" / "torch"
    page.mkdir(parents=True)
    link = f"{wheel.resolve().as_uri()}#sha256={sha256_file(wheel)}"
    (page / "index.html").write_text(f'<html><body><a href="{link}">{wheel.name}</a></body></html>')
    return (root / "torch-index").as_uri()


@pytest.fixture(scope="module")
def e2e(
    tmp_path_factory: pytest.TempPathFactory, engine, base_image, uv_image
) -> Iterator[dict[str, Any]]:
    """The tiny gated profile and its real lock (provision's resolver: torch CPU + PyPI)."""
    root = tmp_path_factory.mktemp("docker-e2e")
    profiles = root / "profiles"
    write_profile(profiles, gated=True, packages=PACKAGES)
    lock = lock_profile(
        "tiny-vlm",
        "infer",
        variant="cpu",
        torch_index=local_torch_index(root),
        use_pip_config=False,
        profiles_dir=profiles,
        lock_dir=root / "lockfiles",
    ).path
    yield {
        "engine": engine,
        "root": root,
        "profiles": profiles,
        "lock": lock,
        "env": {"DOCKER_HOST": engine.docker_host, "PROVISION_PROFILES_DIR": str(profiles)},
        "common": {
            "lock_file": lock,
            "profiles_dir": profiles,
            "out_dir": root / "Dockerfiles",
            "base_image": base_image,
            "uv_image": uv_image,
            "offline": True,
        },
    }
    # Contexts, wheelhouse copies, models and caches: gone with the module, not held to the end.
    shutil.rmtree(root, ignore_errors=True)


def build(e2e: dict[str, Any], name: str, **kwargs: Any):
    e2e["engine"].ensure_alive()
    events: list[BuildEvent] = []
    started = time.monotonic()
    with environ(**e2e["env"], **kwargs.pop("env", {})):
        result = docker_profile(
            "tiny-vlm", build=True, on_event=events.append, **{**e2e["common"], **kwargs}
        )
    TIMINGS[name] = time.monotonic() - started
    log = e2e["root"] / (name.replace(" ", "-").replace(",", "") + ".log")
    log.write_text("\n".join(f"{e.kind}: {e.text}" for e in events))
    print(f"docker build timing: {name}: {TIMINGS[name]:.0f} s ({result.build}; log {log})")
    result.events = events  # type: ignore[attr-defined]
    return result


@pytest.fixture(scope="module")
def mounted(e2e):
    return build(e2e, "first build (mounted weights)", tags=["localhost/tiny-vlm:mounted"])


@pytest.fixture(scope="module")
def models(e2e, mounted, client) -> dict[int, Path]:
    """Tiny Qwen2-VLs (seeds 0, 1, 2) written by the image's own transformers."""
    out = e2e["root"] / "models"
    out.mkdir()
    out.chmod(0o777)  # the image's user (10001) writes here
    folders = {}
    for seed in (0, 1, 2):
        client.containers.run(
            "localhost/tiny-vlm:mounted",
            ["python", "/tests/tinymodel_builder.py", "--kind", "qwen2_vl",
             "--dest", f"/out/seed{seed}", "--seed", str(seed)],
            volumes={str(TESTS_DIR): {"bind": "/tests", "mode": "ro"},
                     str(out): {"bind": "/out", "mode": "rw"}},
            network_mode="none",
            remove=True,
        )  # fmt: skip
        folders[seed] = out / f"seed{seed}"
    return folders


@pytest.fixture(scope="module")
def hub(e2e, models):
    with HubServer(e2e["root"] / "hub", tokens=[TOKEN]) as server:
        server.add_repo(REPO, models[0], gated=True)
        yield server


def download(e2e: dict[str, Any], hub: HubServer, revision: str | None = None):
    profile = load_profile("tiny-vlm", e2e["profiles"])
    with environ(HF_TOKEN=TOKEN):
        return download_profile(
            profile,
            source=hub.url,
            revision=revision,
            lock_file=e2e["lock"],
            hf_cache=e2e["root"] / "hf" / "hub",
            progress=False,
        )


@pytest.fixture(scope="module")
def downloaded(e2e, hub):
    return download(e2e, hub)


@pytest.fixture(scope="module")
def baked(e2e, hub, downloaded, mounted):
    before = len(hub.requests)
    result = build(
        e2e, "rebuild, weights baked", bake_weights=True, tags=["localhost/tiny-vlm:baked-1"],
        env={"HF_TOKEN": TOKEN},
    )  # fmt: skip
    result.hub_requests = hub.requests[before:]  # type: ignore[attr-defined]
    return result


def run_smoke(client, image: str, volumes: dict[str, Any] | None = None) -> tuple[int, dict]:
    container = client.containers.run(
        image, network_mode="none", volumes=volumes or {}, detach=True
    )
    try:
        status = container.wait(timeout=900)["StatusCode"]
        out = container.logs(stdout=True, stderr=False).decode()
        err = container.logs(stdout=False, stderr=True).decode()
    finally:
        container.remove(force=True)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {status}):\n{out[-2000:]}\n{err[-3000:]}"
    return status, json.loads(lines[-1])


# --- the default image ---------------------------------------------------------------------------


def test_offline_build_installs_exactly_the_lock(mounted, client):
    assert mounted.context["uncovered"] == []
    assert any("torch-2.13.0+cpu" in w for w in mounted.context["wheels"])
    steps = [e.text for e in mounted.events if e.kind == "step"]
    assert any("uv pip sync" in s for s in steps) and any("image_fixes" in s for s in steps)
    # The profile's fix was applied and its own check passed during the build.
    output = "\n".join(e.text for e in mounted.events)
    assert "provision fix group-beam-search-dtype: patched (applied), ok" in output
    code = (
        "import importlib.metadata as m, json, shutil; print(shutil.which('uv')); "
        "print(json.dumps([d.metadata['Name'].lower() + '==' + d.version "
        "for d in m.distributions()]))"
    )
    listing = (
        client.containers.run(
            "localhost/tiny-vlm:mounted", ["python", "-c", code], network_mode="none", remove=True
        )
        .decode()
        .splitlines()
    )
    assert listing[0] == "None"  # the installer did not reach the final image
    from provision.lock.lockfile import read_lock
    from provision.lock.resolve import canonical

    def pin(name: str, version: str) -> str:
        return f"{canonical(name)}=={version}"

    installed = {pin(*item.split("==")) for item in json.loads(listing[1])}
    locked = {pin(p["name"], p["version"]) for p in read_lock(mounted.render.lock_file)["packages"]}
    assert installed == locked


def test_mounted_image_runs_the_smoke_with_no_network(mounted, downloaded, client, e2e):
    status, report = run_smoke(
        client,
        "localhost/tiny-vlm:mounted",
        {str(e2e["root"] / "hf"): {"bind": "/data/hf", "mode": "ro"}},
    )
    assert status == 0, report
    assert report["ok"] and report["answer"] and report["weights"] == "mounted"
    # Built before the download, the image asks for `main`, which the cache resolves offline.
    assert report["revision"] == "main"
    assert (
        e2e["root"] / "hf" / "hub" / "models--tiny-org--tiny-qwen2-vl" / "refs" / "main"
    ).read_text() == downloaded.commit
    # Group beam search in bf16 with output_scores: the path the fix in the image repairs.
    assert report["modes"]["group_beam"]["status"] == "ok"
    assert report["versions"]["transformers"] == "4.51.3"


def test_without_the_volume_the_smoke_fails_with_the_models_own_error(mounted, client):
    status, report = run_smoke(client, "localhost/tiny-vlm:mounted")
    assert status == 1 and not report["ok"]
    assert report["error"]["stage"] == "load"


def test_image_metadata_user_labels_and_no_mirror_left(mounted, client):
    image = client.images.get("localhost/tiny-vlm:mounted")
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert "/data/hf" in (config.get("Volumes") or {})
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HOME"] == "/data/hf" and env["VIRTUAL_ENV"] == "/opt/venv"
    assert not [k for k in env if "INDEX_URL" in k or k.startswith("UV_")]
    labels = config["Labels"]
    assert labels["io.provision.profile"] == "tiny-vlm"
    assert labels["io.provision.lock-sha256"] == mounted.render.spec.lock_sha256
    revision = labels["org.opencontainers.image.revision"]
    assert revision == mounted.labels["org.opencontainers.image.revision"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", revision), revision
    assert mounted.tags == ["localhost/tiny-vlm:mounted"]
    history = json.dumps(client.api.history(image.id))
    assert "pypi.org" not in history and "INDEX_URL" not in history


def test_push_to_a_configured_registry(e2e, mounted, registry):
    tag = f"{registry.url}/team/tiny-vlm:1"
    pushed = build(e2e, "rebuild and push (all cached)", tags=[tag], push=True)
    assert pushed.pushed and pushed.pushed[0]["registry"] == registry.url
    assert registry.tags("team/tiny-vlm") == ["1"]
    assert pushed.build["cached_steps"] >= 10


def test_build_with_no_network_has_only_loopback(engine, base_image, tmp_path):
    """What `--offline` asks of the engine: podman needs its own value for "no network"."""
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        "RUN python3 -c \"import socket; print('IFACES', [n for _, n in socket.if_nameindex()])\"\n"
    )
    (tmp_path / ".dockerignore").write_text("*\n")
    events: list[BuildEvent] = []
    with environ(DOCKER_HOST=engine.docker_host):
        result = build_image(connect(), tmp_path, ["localhost/netcheck:1"], network="none",
                             on_event=events.append, nocache=True)  # fmt: skip
    assert "IFACES ['lo']" in [e.text for e in events]
    engine.client().images.remove(result.image_id, force=True)


# --- baked weights, the token, a new checkpoint --------------------------------------------------


def test_baked_gated_image_runs_the_smoke_from_its_own_weights(baked, downloaded, client):
    # The hub let the build through its gate: the token reached the download step.
    resolves = [r for r in baked.hub_requests if "/resolve/" in r.path]
    assert resolves and all(r.status in (200, 302) for r in resolves)
    assert {r.path.rsplit("/", 1)[-1] for r in resolves} >= {f.path for f in downloaded.files}
    status, report = run_smoke(client, "localhost/tiny-vlm:baked-1")
    assert status == 0, report
    assert report["ok"] and report["weights"] == "baked" and report["revision"] == downloaded.commit


def _scan(blob: bytes, needle: bytes, where: str, hits: list[str]) -> None:
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    if needle in blob:
        hits.append(where)


def test_no_secret_in_any_layer_or_in_the_history(baked, client):
    needle = TOKEN.encode()
    image = client.images.get("localhost/tiny-vlm:baked-1")
    hits: list[str] = []
    archive = io.BytesIO(b"".join(image.save(named=True)))
    with tarfile.open(fileobj=archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        assert any(m.name.endswith(".tar") or "/" in m.name for m in members)
        for member in members:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            _scan(data, needle, member.name, hits)
    assert not hits, f"the token is in {hits}"
    assert TOKEN not in json.dumps(image.attrs)
    # Nor in any image the build left behind (the stages' cached layers and their history).
    for each in client.images.list(all=True):
        assert TOKEN not in json.dumps(client.api.history(each.id)), each.id
        assert TOKEN not in json.dumps(each.attrs), each.id


def test_new_checkpoint_rebuilds_only_the_weights_layer(baked, hub, e2e, models, client):
    hub.add_repo(REPO, models[1], gated=True)  # a new commit on main
    second = download(e2e, hub, revision="main")
    assert second.commit != baked.render.spec.model["commit"]
    rebuilt = build(
        e2e, "rebuild, new checkpoint only", bake_weights=True,
        tags=["localhost/tiny-vlm:baked-2"], env={"HF_TOKEN": TOKEN},
    )  # fmt: skip
    old = client.images.get("localhost/tiny-vlm:baked-1").attrs["RootFS"]["Layers"]
    new = client.images.get("localhost/tiny-vlm:baked-2").attrs["RootFS"]["Layers"]
    # Final stage: base, user, python, venv (the packages, with fixes), weights, provision, meta.
    assert len(old) == len(new) == 7
    assert old[:4] == new[:4], "the package layer was rebuilt"
    assert old[4] != new[4], "the weights layer did not change"
    cached = [e.text for e in rebuilt.events if e.kind == "cache"]
    assert len(cached) >= 10  # the packages and env stages came from the cache
    assert not any("uv pip sync" in e.text for e in rebuilt.events if e.kind == "output")
    status, report = run_smoke(client, "localhost/tiny-vlm:baked-2")
    assert status == 0 and report["revision"] == second.commit


def test_weights_that_do_not_match_the_lock_fail_the_build(baked, hub, e2e, models):
    hub.add_repo(REPO, models[2], gated=True)
    third = download(e2e, hub, revision="main")  # the lock now pins this commit and its hashes
    fault = hub.fault("*model.safetensors", corrupt=True)
    try:
        with pytest.raises(ProvisionError) as info:
            build(
                e2e, "bake with corrupted bytes", bake_weights=True,
                tags=["localhost/tiny-vlm:bad"], env={"HF_TOKEN": TOKEN},
            )  # fmt: skip
    finally:
        hub.clear_faults()
    assert fault.hits >= 1
    # podman 4.3's service panics when a stage fails while another stage of the same call waits
    # for it (containers/buildah#7091); provision builds one stage per call on podman, so the
    # failed download leaves the engine up.
    time.sleep(3)
    assert e2e["engine"].process.poll() is None, e2e["engine"].log.read_text()[-3000:]
    assert "containers/buildah#7091" not in (info.value.hint or "")
    message = str(info.value)
    assert "model.safetensors" in message and "the lock says" in message
    sha = next(f.sha256 for f in third.files if f.path == "model.safetensors")
    assert sha in message


def test_a_base_image_the_engine_cannot_get_is_one_message(e2e, mounted):
    with pytest.raises(ProvisionError) as info:
        build(e2e, "unknown base", base_image="localhost:1/nowhere/base:1.0")
    assert "base image localhost:1/nowhere/base:1.0 is not on the engine" in info.value.message
    assert "--base-image" in info.value.hint
