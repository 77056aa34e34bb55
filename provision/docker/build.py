"""`provision docker`: render a profile's Dockerfile from its lock; optionally build, tag, push.

render_profile("qwen2-vl-2b")                 # Dockerfiles/qwen2-vl-2b.Dockerfile (+ ignore)
docker_profile("qwen2-vl-2b", build=True)     # ... and build it through the docker SDK
render_builtins(check=True)                   # are the committed Dockerfiles current?
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.docker.base_images import BaseImage, choose_base_image, parse_image_ref
from provision.docker.render import (
    SECRET_ID,
    RenderOptions,
    default_uv_image,
    image_tag,
    render_dockerfile,
    render_dockerignore,
)
from provision.docker.spec import HF_ENDPOINT, ImageSpec, load_spec
from provision.errors import CheckFailed, ProvisionError

DOCKERFILES_DIR = "Dockerfiles"


@dataclass
class RenderResult:
    profile: str
    dockerfile: Path
    dockerignore: Path
    base: BaseImage
    uv_image: str
    bake_weights: bool
    tag: str
    lock_file: Path
    changed: bool  # the files on disk differed (or were missing) before this call
    written: bool
    spec: ImageSpec = field(repr=False)
    options: RenderOptions = field(repr=False)
    text: str = field(default="", repr=False)
    ignore_text: str = field(default="", repr=False)
    task: str = "infer"
    given_lock: Path | None = None  # --lock, when the user named one

    @property
    def warnings(self) -> list[str]:
        return list(self.base.warnings)

    def command(self, *extra: str) -> str:
        """The `provision docker` line that renders this again, with the flags given."""
        parts = ["provision", "docker", self.profile]
        if self.task != "infer":
            parts += ["--task", self.task]
        if self.bake_weights:
            parts.append("--bake-weights")
        if self.given_lock is not None:
            parts += ["--lock", str(self.given_lock)]
        return " ".join([*parts, *extra])

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "dockerfile": str(self.dockerfile),
            "dockerignore": str(self.dockerignore),
            "lock_file": str(self.lock_file),
            "lock_sha256": self.spec.lock_sha256,
            "base_image": self.base.to_json(),
            "uv_image": self.uv_image,
            "bake_weights": self.bake_weights,
            "tag": self.tag,
            "changed": self.changed,
            "written": self.written,
            "warnings": self.warnings,
        }


@dataclass
class DockerResult:
    render: RenderResult
    tags: list[str] = field(default_factory=list)
    engine: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    pushed: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # given to the engine at build time
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.render.to_json(),
            "tags": list(self.tags),
            "engine": self.engine,
            "context": self.context,
            "build": self.build,
            "pushed": self.pushed,
            "labels": self.labels,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def dockerfile_paths(
    profile: str, out_dir: str | os.PathLike[str] | None, task: str = "infer"
) -> tuple[Path, Path]:
    """`<profile>.Dockerfile` for the infer task, `<profile>--<task>.Dockerfile` for the others
    (named per task, as the locks are), each with its .dockerignore."""
    folder = Path(out_dir) if out_dir else Path(DOCKERFILES_DIR)
    name = profile if task == "infer" else f"{profile}--{task}"
    dockerfile = folder / f"{name}.Dockerfile"
    # Docker's per-Dockerfile ignore file (BuildKit reads <Dockerfile>.dockerignore beside it).
    return dockerfile, folder / f"{name}.Dockerfile.dockerignore"


def _hf_endpoint(spec: ImageSpec, explicit: str | None) -> str:
    """The image's HF_ENDPOINT: an ARG default and ENV, so `docker history` shows it; a
    user:password in the URL is left out (provision.secrets)."""
    from provision.secrets import public

    if explicit:
        return public(explicit.rstrip("/"))
    source = str(spec.model.get("source", ""))
    endpoint = spec.model.get("endpoint")
    if endpoint and not source.startswith(("modelscope", "local")):
        return public(str(endpoint).rstrip("/"))
    return HF_ENDPOINT


def render_profile(
    profile: str,
    *,
    lock_file: str | os.PathLike[str] | None = None,
    task: str = "infer",
    out_dir: str | os.PathLike[str] | None = None,
    base_image: str | None = None,
    uv_image: str | None = None,
    bake_weights: bool = False,
    hf_endpoint: str | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    write: bool = True,
) -> RenderResult:
    """Render `profile`'s Dockerfile and .dockerignore from its lock; write them unless `write`
    is false (then `changed` says whether the files on disk are stale)."""
    from provision.atomic import atomic_write_text
    from provision.profiles import profile_name

    profile = profile_name(profile, profiles_dir)  # a repo id or folder: its profile's name
    spec = load_spec(profile, lock_file, task, profiles_dir, lock_dir, records=bake_weights)
    base = choose_base_image(spec.target, base_image)
    uv = uv_image or default_uv_image()
    parse_image_ref(uv, "--uv-image")
    if bake_weights and not (spec.model.get("commit") and spec.model.get("files")):
        raise ProvisionError(
            f"--bake-weights needs the weights recorded in {spec.lock_file.name} (the model's "
            "commit and each file's sha256), and the lock has none.",
            f"Run `provision download {profile}` first; it records them.",
        )
    options = RenderOptions(
        base=base,
        uv_image=uv,
        bake_weights=bake_weights,
        gated=bake_weights and spec.gated,
        hf_endpoint=_hf_endpoint(spec, hf_endpoint),
    )
    text = render_dockerfile(spec, options)
    ignore = render_dockerignore(spec)
    dockerfile, dockerignore = dockerfile_paths(profile, out_dir, task)
    changed = not (
        dockerfile.exists()
        and dockerignore.exists()
        and dockerfile.read_text(encoding="utf-8") == text
        and dockerignore.read_text(encoding="utf-8") == ignore
    )
    if write and changed:
        atomic_write_text(dockerfile, text)
        atomic_write_text(dockerignore, ignore)
    return RenderResult(
        profile=profile,
        dockerfile=dockerfile,
        dockerignore=dockerignore,
        base=base,
        uv_image=uv,
        bake_weights=bake_weights,
        tag=image_tag(spec),
        lock_file=spec.lock_file,
        changed=changed,
        written=write and changed,
        spec=spec,
        options=options,
        text=text,
        ignore_text=ignore,
        task=task,
        given_lock=Path(lock_file) if lock_file else None,
    )


def image_meta(spec: ImageSpec, options: RenderOptions) -> dict[str, Any]:
    """image.json: what the image's smoke entry point runs, and what the image was made from."""
    return {
        "profile": spec.profile,
        "task": spec.task,
        "lock_sha256": spec.lock_sha256,
        "repo_id": spec.model.get("repo_id"),
        "revision": spec.model.get("commit") or spec.model.get("revision") or "main",
        "weights": "baked" if options.bake_weights else "mounted",
        "smoke": spec.smoke,
        "trust_remote_code": spec.trust_remote_code,
        "backend": spec.backend,
    }


def _token() -> str | None:
    from provision.hub.listing import hf_token

    return hf_token()


def docker_profile(
    profile: str,
    *,
    build: bool = False,
    context_dir: str | os.PathLike[str] | None = None,
    wheelhouses: list[str | os.PathLike[str]] | None = None,
    offline: bool = False,
    tags: list[str] | None = None,
    push: bool = False,
    build_args: dict[str, str] | None = None,
    on_event: Callable[[Any], None] | None = None,
    nocache: bool = False,
    **render_kwargs: Any,
) -> DockerResult:
    """Render, and with `build` build the image through the docker SDK (see engine.py).

    `offline`: every package file goes into the context (fetched here, hash-checked) and the
    build runs with no network. `context_dir` keeps the staged context there (else a temporary
    folder). `tags` replace the default `provision/<profile>:<short lock hash>`.
    """
    if push and not build:
        raise ProvisionError("--push needs --build.", "Add --build to build the image first.")
    for tag in tags or []:
        parse_image_ref(tag, "--tag")
    started = time.monotonic()
    rendered = render_profile(profile, **render_kwargs)
    result = DockerResult(rendered, tags=list(tags or [rendered.tag]))
    if push:  # before minutes of building, not after
        from provision.docker.engine import check_pushable

        for tag in result.tags:
            check_pushable(tag)
    result.timings["render_s"] = time.monotonic() - started
    if not build and not context_dir:
        return result
    spec, options = rendered.spec, rendered.options
    secrets: dict[str, str] = {}
    if build and options.gated:
        token = _token()
        if not token:
            raise ProvisionError(
                f"{spec.model.get('repo_id')} is gated, and baking it needs a Hugging Face token.",
                "Accept the license on the model's page, then set HF_TOKEN (or `hf auth login`); "
                "the token reaches the build only as a secret, never as an argument or layer.",
            )
        secrets[SECRET_ID] = token
    engine = None
    if build:
        from provision.docker.engine import connect, ensure_image

        engine = connect()
        result.engine = engine.to_json()
        ensure_image(engine, str(rendered.base.ref), "base image", "--base-image")
        ensure_image(engine, rendered.uv_image, "uv image", "--uv-image")

    from provision.docker.context import git_revision, stage_context

    temp = None
    if context_dir:
        context = Path(context_dir)
    else:
        temp = tempfile.TemporaryDirectory(prefix=f"provision-docker-{spec.profile}-")
        context = Path(temp.name) / "context"
    try:
        t0 = time.monotonic()
        staged = stage_context(
            context,
            spec,
            rendered.text,
            rendered.ignore_text,
            image_meta(spec, options),
            [Path(w) for w in wheelhouses or []],
            bake_weights=options.bake_weights,
            fetch_missing=offline,
        )
        result.context = staged.to_json()
        result.timings["context_s"] = time.monotonic() - t0
        if offline and staged.uncovered:
            raise ProvisionError(
                f"--offline: no local file for {', '.join(staged.uncovered)}.",
                "Pass --wheelhouse DIR with them, or build without --offline.",
            )
        if engine is None:
            return result
        from provision.docker.engine import build_image, push_image

        args: dict[str, str] = {}
        if offline:
            args.update({"PIP_INDEX_URL": "", "TORCH_INDEX_URL": ""})
        args.update(build_args or {})
        result.labels = {"org.opencontainers.image.revision": git_revision()}
        t0 = time.monotonic()
        built = build_image(
            engine,
            context,
            result.tags,
            buildargs=args,
            secrets=secrets,
            network="none" if offline and not options.bake_weights else None,
            on_event=on_event,
            nocache=nocache,
            labels=result.labels,
            # podman: one stage per call, so no stage waits on one that fails (engine.py).
            stages=_stages(options) if engine.kind == "podman" else (),
        )
        result.build = built.to_json()
        result.timings["build_s"] = time.monotonic() - t0
        if push:
            for tag in result.tags:
                result.pushed.append(push_image(engine, tag, on_event))
    finally:
        if temp is not None:
            temp.cleanup()
    result.timings["total_s"] = time.monotonic() - started
    return result


def _stages(options: RenderOptions) -> tuple[str, ...]:
    return ("packages", "env", "weights") if options.bake_weights else ("packages", "env")


def render_builtins(
    out_dir: str | os.PathLike[str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    check: bool = False,
) -> list[RenderResult]:
    """Every built-in profile's Dockerfile from its committed lock (the infer task).

    With `check`, nothing is written and CheckFailed lists the stale or missing files.
    """
    from provision.lock.lockfile import lock_path
    from provision.profiles import load_profile_file
    from provision.resources import REPO_DIR, builtin_dir

    locks = Path(lock_dir) if lock_dir else builtin_dir("lockfiles")
    folder = Path(out_dir) if out_dir else REPO_DIR / DOCKERFILES_DIR
    results = []
    for path in sorted(builtin_dir("profiles").glob("*.toml")):
        profile = load_profile_file(path, builtin=True)
        results.append(
            render_profile(
                profile.name,
                lock_file=lock_path(profile.name, locks),
                out_dir=folder,
                write=not check,
            )
        )
    if check:
        stale = [r for r in results if r.changed]
        expected = {r.dockerfile.name for r in results} | {r.dockerignore.name for r in results}
        extra = sorted(p.name for p in folder.glob("*") if p.is_file() and p.name not in expected)
        if stale or extra:
            problems = [f"{r.dockerfile} is stale or missing" for r in stale]
            problems += [f"{folder / name} belongs to no built-in profile" for name in extra]
            raise CheckFailed(
                "Dockerfiles/ is not what the lockfiles give: " + "; ".join(problems) + ".",
                "Regenerate them with `provision docker --all` and commit the result.",
            )
    return results
