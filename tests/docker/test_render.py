"""Rendering: what the Dockerfile says, that hadolint accepts it, and the bad inputs. No engine."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from provision.docker.base_images import base_table, choose_base_image, parse_image_ref
from provision.docker.build import docker_profile, render_builtins, render_profile
from provision.docker.context import stage_context
from provision.docker.engine import Engine, _context_archive, build_image, registry_of
from provision.docker.spec import load_spec
from provision.errors import CheckFailed, ProvisionError
from provision.lock.lockfile import read_lock
from provision.resources import REPO_DIR
from tests.cli_helpers import invoke
from tests.docker.helpers import (
    fake_sha,
    hadolint,
    no_docker_env,
    stages,
    write_lock,
    write_profile,
)

DOCKERFILES = REPO_DIR / "Dockerfiles"


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    write_profile(folder)
    write_profile(folder, name="tiny-gated", gated=True)
    monkeypatch.setenv("PROVISION_PROFILES_DIR", str(folder))
    return folder


def render(tmp_path: Path, lock: Path, profile: str = "tiny-vlm", **kwargs):
    return render_profile(profile, lock_file=lock, out_dir=tmp_path / "Dockerfiles", **kwargs)


# --- the committed Dockerfiles -------------------------------------------------------------------


def test_committed_dockerfiles_are_current():
    """`provision docker --all` regenerates Dockerfiles/ from lockfiles/; CI fails if it differs."""
    results = render_builtins(check=True)
    assert {r.dockerfile.name for r in results} == {
        p.name for p in DOCKERFILES.glob("*.Dockerfile")
    }
    proc = invoke("docker", "--all", "--check")
    assert proc.returncode == 0, proc.stderr


def test_check_notices_a_stale_dockerfile(tmp_path: Path):
    out = tmp_path / "Dockerfiles"
    render_builtins(out)
    first = sorted(out.glob("*.Dockerfile"))[0]
    first.write_text(first.read_text() + "# edited by hand\n")
    with pytest.raises(CheckFailed, match=first.name):
        render_builtins(out, check=True)
    proc = invoke("docker", "--all", "--check", "--out", str(out))
    assert proc.returncode == 1 and "provision docker --all" in proc.stderr


@pytest.mark.parametrize(
    "dockerfile", sorted(DOCKERFILES.glob("*.Dockerfile")), ids=lambda p: p.stem
)
def test_committed_dockerfiles_pass_hadolint(dockerfile: Path):
    proc = hadolint(dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_variant_and_option_passes_hadolint(tmp_path: Path, profiles: Path):
    model = {
        "source": "hf-mirror",
        "endpoint": "https://hf-mirror.com",
        "repo_id": "tiny-org/tiny-qwen2-vl",
        "revision": "main",
        "commit": "a" * 40,
        "files": [{"path": "model.safetensors", "size": 10, "sha256": fake_sha("m")}],
    }
    cases = {
        "cpu": dict(variant="cpu", cuda=None),
        "cu118": dict(variant="cu118", cuda="11.8"),
        "cu128-flat-mirror": dict(
            variant="cu128",
            cuda="12.8",
            torch_index={
                "url": "https://mirrors.aliyun.com/pytorch-wheels/cu128/",
                "route": "mirror:aliyun",
                "format": "flat",
            },
        ),
        "no-fixes": dict(fixes=()),
        "baked": dict(model=model),
    }
    for name, kwargs in cases.items():
        bake = "model" in kwargs
        for profile in ("tiny-vlm", "tiny-gated") if bake else ("tiny-vlm",):
            lock = write_lock(tmp_path / f"{name}-{profile}", profile=profile, **kwargs)
            result = render(tmp_path / f"{name}-{profile}", lock, profile, bake_weights=bake)
            proc = hadolint(result.dockerfile)
            assert proc.returncode == 0, f"{name}/{profile}:\n{proc.stdout}{proc.stderr}"


# --- what the Dockerfile says --------------------------------------------------------------------


def test_structure_base_tag_stages_user_labels(tmp_path: Path, profiles: Path):
    lock = write_lock(tmp_path)
    result = render(tmp_path, lock)
    text = result.dockerfile.read_text()
    assert "ARG BASE_IMAGE=docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04" in text
    assert ":latest" not in text
    parts = stages(text)
    assert list(parts) == ["uv", "packages", "env", "final"]
    # The package layer comes first, from the requirements alone; fixes after; final copies env.
    assert "COPY requirements.lock.txt" in parts["packages"]
    assert "uv pip sync" in parts["packages"] and "--require-hashes" in parts["packages"]
    assert "image_fixes group-beam-search-dtype" in parts["env"]
    final = parts["final"]
    assert final.index("COPY --from=env /opt/venv") < final.index("COPY pylock.toml")
    assert "uv" not in final.split("COPY --from=env /opt/venv")[0].replace("useradd", "")
    assert "USER 10001:10001" in final and 'VOLUME ["/data/hf"]' in final
    assert "HF_HOME=/data/hf" in final and 'HF_ENDPOINT="$HF_ENDPOINT"' in final
    assert f'io.provision.lock-sha256="{result.spec.lock_sha256}"' in final
    assert 'io.provision.profile="tiny-vlm"' in final
    assert "image_smoke.py" in final.splitlines()[-1]
    assert result.tag == f"provision/tiny-vlm:{result.spec.lock_sha256[:12]}"
    # Rendering is deterministic, and a second render leaves the file alone.
    again = render(tmp_path, lock)
    assert again.text == result.text and not again.changed and not again.written


def test_mirrors_are_build_args_of_the_package_stage_only(tmp_path: Path, profiles: Path):
    lock = write_lock(
        tmp_path,
        default_index="https://user:s3cret@mirror.example.com/pypi/simple",
        torch_index={
            "url": "https://download.pytorch.org/whl/cu124",
            "route": "pytorch",
            "format": "simple",
        },
    )
    text = render(tmp_path, lock).dockerfile.read_text()
    parts = stages(text)
    assert "ARG PIP_INDEX_URL=https://mirror.example.com/pypi/simple" in parts["packages"]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124" in parts["packages"]
    assert "s3cret" not in text and "user@" not in text  # credentials never written
    for stage in ("env", "final"):
        assert "INDEX_URL" not in parts[stage], stage


def test_weights_mounted_by_default_baked_in_their_own_layer(tmp_path: Path, profiles: Path):
    model = {
        "source": "huggingface",
        "endpoint": "https://hf-mirror.com",
        "repo_id": "tiny-org/tiny-qwen2-vl",
        "revision": "main",
        "commit": "b" * 40,
        "files": [{"path": "model.safetensors", "size": 10, "sha256": fake_sha("m")}],
    }
    lock = write_lock(tmp_path, profile="tiny-gated", model=model)
    mounted = render(tmp_path, lock, "tiny-gated")
    assert (
        "weights" not in stages(mounted.text) and 'io.provision.weights="mounted"' in mounted.text
    )
    baked = render(tmp_path / "b", lock, "tiny-gated", bake_weights=True)
    parts = stages(baked.text)
    # Downloaded in a stage of its own, FROM packages (not env): a fix or provision upgrade does
    # not download the weights again, and a new checkpoint does not touch the package layer.
    assert parts["weights"].startswith("FROM packages AS weights")
    assert "ARG HF_ENDPOINT=https://hf-mirror.com" in parts["weights"]
    assert "RUN --mount=type=secret,id=hf_token " in parts["weights"]
    final = parts["final"]
    assert final.index("COPY --from=env /opt/venv") < final.index("COPY --from=weights")
    assert "HF_HUB_CACHE=/opt/weights/hub" in final
    for where in ("ARG", "ENV", "LABEL"):
        assert not any(
            "TOKEN" in line for line in baked.text.splitlines() if line.startswith(where)
        )
    # Not gated: no secret mount at all (the classic Docker builder can then build it too).
    open_lock = write_lock(tmp_path / "o", model=model)
    plain = render(tmp_path / "o", open_lock, bake_weights=True)
    assert "--mount" not in plain.text


def test_requirements_pin_every_package_with_every_hash(tmp_path: Path, profiles: Path):
    lock = write_lock(tmp_path)
    spec = load_spec("tiny-vlm", lock)
    text = spec.requirements_text()
    assert "numpy==2.2.6 \\" in text and "torch==2.6.0 \\" in text
    for pkg in spec.packages:
        for artifact in pkg.artifacts:
            assert f"--hash=sha256:{artifact.sha256}" in text
    assert spec.lock_sha256 not in text  # the package layer's cache must not follow the lock hash
    lock.write_text(lock.read_text() + "\n# a recorded result changes the lock, not the packages\n")
    assert load_spec("tiny-vlm", lock).requirements_text() == text


# --- base images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "image"),
    [
        ("cpu", "docker.io/library/ubuntu:22.04"),
        ("cu118", "docker.io/nvidia/cuda:11.8.0-base-ubuntu22.04"),
        ("cu121", "docker.io/nvidia/cuda:12.1.1-base-ubuntu22.04"),
        ("cu124", "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04"),
        ("cu126", "docker.io/nvidia/cuda:12.6.3-base-ubuntu22.04"),
        ("cu128", "docker.io/nvidia/cuda:12.8.1-base-ubuntu22.04"),
    ],
)
def test_base_image_follows_the_lock_variant(variant: str, image: str):
    cuda = "" if variant == "cpu" else f"{variant[2:-1]}.{variant[-1]}"
    base = choose_base_image(
        {"variant": variant, "cuda": cuda, "platform": "x86_64-manylinux_2_28"}
    )
    assert str(base.ref) == image
    if variant != "cpu":
        assert base.cuda.startswith(cuda)


def test_every_table_image_is_pinned_and_every_variant_in_use_has_a_row():
    for name, row in base_table()["variants"].items():
        ref = parse_image_ref(row["image"], name)
        assert ref.tag and ref.tag != "latest" and row["source"]
    used = set()
    for lock in (REPO_DIR / "lockfiles").glob("pylock.*.toml"):
        spec = lock.read_text()
        used.update(
            line.split('"')[1] for line in spec.splitlines() if line.startswith("variant = ")
        )
    assert used and used <= set(base_table()["variants"]), used - set(base_table()["variants"])


def test_base_image_override(tmp_path: Path, profiles: Path):
    digest = "sha256:" + "c" * 64
    lock = write_lock(tmp_path)
    result = render(
        tmp_path, lock, base_image=f"registry.lab:5000/nvidia/cuda:12.4.1-base-ubuntu22.04@{digest}"
    )
    assert (
        f"ARG BASE_IMAGE=registry.lab:5000/nvidia/cuda:12.4.1-base-ubuntu22.04@{digest}"
        in result.text
    )
    assert result.base.chosen_by == "--base-image" and result.base.cuda == "12.4.1"
    private = render(tmp_path / "p", lock, base_image="registry.lab/ml/base:2026.1")
    assert private.base.cuda == "" and not private.warnings
    older = render(tmp_path / "o", lock, base_image="nvidia/cuda:12.1.1-base-ubuntu22.04")
    assert any("older than the lock's cu124" in w for w in older.warnings)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nvidia/cuda", "names no tag"),
        ("nvidia/cuda:latest", "`latest` tag"),
        ("Not An Image!", "is not an image reference"),
        ("nvidia/cuda:base-ubuntu22.04", "names no CUDA version"),
    ],
)
def test_unusable_base_image_is_one_message(tmp_path: Path, profiles: Path, override, message):
    lock = write_lock(tmp_path)
    with pytest.raises(ProvisionError, match=message):
        render(tmp_path, lock, base_image=override)


def test_cuda_base_for_a_lock_without_cuda_variant(tmp_path: Path, profiles: Path):
    lock = write_lock(tmp_path, variant="cpu", cuda=None)
    with pytest.raises(ProvisionError, match="the lock has no CUDA variant") as info:
        render(tmp_path, lock, base_image="nvidia/cuda:12.4.1-base-ubuntu22.04")
    assert "provision lock" in info.value.hint
    no_variant = write_lock(tmp_path / "n", variant=None, cuda=None)
    with pytest.raises(ProvisionError, match="records no torch variant"):
        render(tmp_path / "n", no_variant)


def test_unknown_variant_and_too_old_os(tmp_path: Path, profiles: Path):
    lock = write_lock(tmp_path, variant="cu999", cuda="99.9")
    with pytest.raises(
        ProvisionError, match="No base image is known for the lock's variant 'cu999'"
    ) as info:
        render(tmp_path, lock)
    assert "--base-image" in info.value.hint
    newer = write_lock(tmp_path / "g", platform="x86_64-manylinux_2_39")
    with pytest.raises(ProvisionError, match="glibc 2.35"):
        render(tmp_path / "g", newer)


# --- other bad input -----------------------------------------------------------------------------


def test_no_lock_bake_without_weights_gated_without_token(
    tmp_path: Path, profiles: Path, monkeypatch: pytest.MonkeyPatch
):
    with pytest.raises(ProvisionError, match="No lockfile for tiny-vlm") as info:
        render_profile("tiny-vlm", lock_dir=tmp_path / "none", out_dir=tmp_path)
    assert "provision lock tiny-vlm" in info.value.hint
    lock = write_lock(tmp_path)
    with pytest.raises(ProvisionError, match="--bake-weights needs the weights recorded"):
        render(tmp_path, lock, bake_weights=True)
    model = {
        "repo_id": "tiny-org/tiny-qwen2-vl",
        "revision": "main",
        "commit": "d" * 40,
        "files": [{"path": "model.safetensors", "size": 1, "sha256": fake_sha("x")}],
    }
    gated = write_lock(tmp_path / "g", profile="tiny-gated", model=model)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ProvisionError, match="is gated, and baking it needs a Hugging Face token"):
        docker_profile(
            "tiny-gated",
            build=True,
            lock_file=gated,
            out_dir=tmp_path / "out",
            bake_weights=True,
        )


def test_no_engine_says_how_to_start_one(tmp_path: Path, profiles: Path):
    lock = write_lock(tmp_path)
    env = {**no_docker_env(), "PROVISION_PROFILES_DIR": str(profiles)}
    proc = invoke(
        "docker", "tiny-vlm", "--lock", str(lock), "--out", str(tmp_path), "--build", env=env
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert "No container engine answers" in err and "/nonexistent/provision-test/docker.sock" in err
    assert "DOCKER_HOST" in err and "podman system service" in err
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "arg",
    [
        "HF_TOKEN=hf_abc",
        "pip_password=s3cr3t-pw",
        "PIP_INDEX_URL=https://me:pw@pypi.example/simple",
        "PIP_EXTRA_INDEX_URL=https://ghp_t0ken123@git.example/simple",
    ],
)
def test_a_secret_as_build_arg_is_refused_before_any_build(tmp_path: Path, profiles: Path, arg):
    """Build arguments end up in `docker history`; a token or password must not go in as one."""
    lock = write_lock(tmp_path)
    env = {**no_docker_env(), "PROVISION_PROFILES_DIR": str(profiles)}
    proc = invoke(
        "docker", "tiny-vlm", "--lock", str(lock), "--out", str(tmp_path), "--build",
        "--build-arg", arg, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert "would store a secret in the image's history" in err and "HF_TOKEN" in err
    assert "No container engine" not in err  # refused before looking for one
    assert arg.partition("=")[2] not in proc.stderr  # the value itself is never echoed


def test_a_build_arg_that_only_looks_like_a_secret_word_is_accepted(tmp_path, profiles):
    """TOKENIZERS_PARALLELISM is not a token: refused only by the missing engine, later."""
    lock = write_lock(tmp_path)
    env = {**no_docker_env(), "PROVISION_PROFILES_DIR": str(profiles)}
    proc = invoke(
        "docker", "tiny-vlm", "--lock", str(lock), "--out", str(tmp_path), "--build",
        "--build-arg", "TOKENIZERS_PARALLELISM=false", env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "No container engine answers" in " ".join(proc.stderr.split())


def test_docker_engine_with_a_build_secret_says_which_command_to_run(tmp_path: Path):
    """docker-py cannot hand BuildKit a secret; against Docker the message gives the CLI way."""
    docker = Engine(client=None, host="unix:///var/run/docker.sock", kind="docker",
                    version="27.0", api_version="1.46")  # fmt: skip
    with pytest.raises(ProvisionError, match="cannot pass build secrets") as info:
        build_image(docker, tmp_path, ["provision/x:1"], secrets={"hf_token": "hf_x"})
    assert "docker buildx build --secret id=hf_token,env=HF_TOKEN" in info.value.hint
    assert "hf_x" not in str(info.value)


def test_push_needs_a_registry_in_the_tag():
    assert registry_of("registry.example.com/team/x:1") == "registry.example.com"
    assert registry_of("localhost:5000/x:1") == "localhost:5000"
    assert registry_of("provision/qwen:abc") is None
    with pytest.raises(ProvisionError, match="--push needs --build"):
        docker_profile("x", push=True, build=False, lock_file="/nonexistent")  # type: ignore[arg-type]


def test_push_without_a_registry_tag_is_refused_before_building(tmp_path: Path, profiles: Path):
    lock = write_lock(tmp_path)
    env = {**no_docker_env(), "PROVISION_PROFILES_DIR": str(profiles)}
    proc = invoke(
        "docker", "tiny-vlm", "--lock", str(lock), "--out", str(tmp_path), "--build", "--push",
        env=env,
    )  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "names no registry" in err
    assert "No container engine" not in err  # refused before an engine is even looked for


# --- the build context ---------------------------------------------------------------------------


def test_context_holds_only_what_the_dockerfile_copies(tmp_path: Path, profiles: Path, monkeypatch):
    from tests.envs.helpers import make_wheel, sha256_file

    monkeypatch.setenv("PROVISION_WHEEL_CACHE", str(tmp_path / "wheel-cache"))

    wheel = make_wheel(tmp_path / "house", "tinypkg", "1.0")
    stray = make_wheel(tmp_path / "house", "other", "2.0")
    bad = make_wheel(tmp_path / "bad", "tinypkg", "1.0").parent
    (bad / wheel.name).write_bytes(b"not the locked bytes")
    packages = [
        {
            "name": "tinypkg",
            "version": "1.0",
            "wheels": [{"url": f"https://example.invalid/{wheel.name}",
                        "hashes": {"sha256": sha256_file(wheel)}}],
        },
        {"name": "other", "version": "2.0",
         "wheels": [{"path": str(stray), "hashes": {"sha256": sha256_file(stray)}}]},
    ]  # fmt: skip
    lock = write_lock(tmp_path, packages=packages)
    result = render(tmp_path, lock)
    spec = result.spec
    context = tmp_path / "ctx"
    staged = stage_context(
        context, spec, result.text, result.ignore_text, {"profile": "tiny-vlm"}, [bad, wheel.parent]
    )
    # The lock's own path entry and the wheelhouse's match are in; the wrong bytes are not.
    assert sorted(staged.wheels) == sorted([wheel.name, stray.name])
    assert str(bad / wheel.name) in staged.skipped and not staged.uncovered
    # --offline fetches only what no wheelhouse holds: the file whose URL is unreachable
    # (example.invalid) comes from the wheelhouse, with no download tried.
    offline = stage_context(
        tmp_path / "ctx-offline", spec, result.text, result.ignore_text, {}, [wheel.parent],
        fetch_missing=True,
    )  # fmt: skip
    assert sorted(offline.wheels) == sorted([wheel.name, stray.name]) and not offline.uncovered
    assert (context / "provision" / "docker" / "image_fixes.py").exists()
    assert (context / "provision" / "smoke" / "runner.py").exists()
    assert not (context / "provision" / "cli").exists()  # only what the image runs
    # Whatever lands in the folder by accident stays out of what the engine receives.
    (context / "token.txt").write_text("hf_should_never_leave")
    (context / ".git").mkdir()
    (context / ".git" / "config").write_text("[remote]")
    archive, options = _context_archive(context, {"hf_token": "hf_secret_value"})
    with archive, tarfile.open(fileobj=archive) as tar:
        names = set(tar.getnames())
        secret = tar.extractfile(".provision-secret-hf_token")
        assert secret is not None and secret.read() == b"hf_secret_value"
        # What goes to the engine is one whole tar of the length announced...
        archive.seek(0)
        assert len(archive.read()) == len(archive)
        # ...and the token is never in the temporary file behind it.
        on_disk = Path(archive._head.name).read_bytes()
        assert b"hf_secret_value" not in on_disk and b"hf_should_never_leave" not in on_disk
    assert "token.txt" not in names and ".git/config" not in names
    assert {"Dockerfile", "requirements.lock.txt", "pylock.toml", "image.json"} <= names
    assert f"wheels/{wheel.name}" in names
    # The secret travels as its own member, which the engine moves out of the context.
    assert options == ["id=hf_token,src=.provision-secret-hf_token"]
    assert ".provision-secret-hf_token" in names
    # A folder provision did not make is never cleared.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ProvisionError, match="not made by provision"):
        stage_context(foreign, spec, result.text, result.ignore_text, {})
    assert (foreign / "notes.txt").read_text() == "keep"


def test_hf_endpoint_with_a_password_stays_out_of_the_dockerfile(tmp_path: Path, profiles: Path):
    """ARG/ENV values are visible in `docker history` and the image config (issue 11, item 3)."""
    secret = "pw-n0t-f0r-images"
    lock = write_lock(tmp_path)
    result = render(tmp_path, lock, hf_endpoint=f"https://alice:{secret}@mirror.example/")
    text = result.dockerfile.read_text()
    assert "ARG HF_ENDPOINT=https://mirror.example\n" in text
    assert secret not in text
    assert all(
        secret not in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
    )


# Valid TOML, wrong shapes: each was a TypeError/AttributeError/ValueError traceback (exit 1)
# from `provision docker --lock` before the lock's shapes were checked (issue 11, item 10).
WRONG_SHAPES = [
    (("tool", "provision", "target"), "cu124", "tool.provision.target must be a table"),
    (("packages",), "torch", "packages must be a list"),
    (("packages", 0), "torch", "packages[0] must be a table"),
    (("packages", 0, "wheels"), "x.whl", "packages[0].wheels must be a list"),
    (("packages", 0, "wheels", 0, "hashes"), ["ab"], "packages[0].wheels[0].hashes must be a t"),
    (("tool", "provision", "indexes", "default"), 1, "indexes.default must be a string"),
    (("tool", "provision", "model"), 1, "tool.provision.model must be a table"),
    (("tool", "provision", "fixes"), ["x"], "tool.provision.fixes must be a table"),
    (("tool", "provision", "profile"), "tiny", "tool.provision.profile must be a table"),
    (("tool", "provision"), "x", "tool.provision must be a table"),
    (("tool", "provision", "env"), "A=1", "tool.provision.env must be a table"),
    (("tool", "provision", "target", "python"), 3.11, "target.python must be a string, got a n"),
    (("tool", "provision", "fixes", "apply"), "x", "fixes.apply must be a list"),
]


@pytest.mark.parametrize(("where", "value", "message"), WRONG_SHAPES)
def test_a_wrong_typed_lock_is_one_message_naming_the_file_and_field(
    tmp_path: Path, profiles: Path, where, value, message
):
    import tomli_w

    lock = write_lock(tmp_path)
    data = read_lock(lock)
    table = data
    for key in where[:-1]:
        table = table[key]
    table[where[-1]] = value
    lock.write_text(tomli_w.dumps(data))
    proc = invoke("docker", "tiny-vlm", "--lock", str(lock), "--out", str(tmp_path / "out"),
                   env={"PROVISION_PROFILES_DIR": str(profiles)})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert str(lock) in first and message in first
    assert "provision lock" in proc.stderr  # the way out
    assert not (tmp_path / "out").exists()


def test_every_shipped_lock_has_the_shapes_its_readers_need():
    locks = sorted((REPO_DIR / "lockfiles").glob("pylock.*.toml"))
    assert len(locks) > 10
    for lock in locks:
        read_lock(lock)  # raises LockShapeError on the first wrong type
