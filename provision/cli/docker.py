"""`provision docker PROFILE`: the profile's Dockerfile from its lock; --build, --tag, --push."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.choices import Task
from provision.cli.options import JsonFlag, ProfilesDir, TaskOpt
from provision.cli.output import console, emit, use_json


def _build_args(values: list[str] | None) -> dict[str, str]:
    import re

    from provision.errors import ProvisionError
    from provision.settings import SECRET_NAMES

    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProvisionError(
                f"--build-arg {item!r} is not KEY=VALUE.", "e.g. --build-arg PIP_INDEX_URL=URL"
            )
        # Build arguments are kept in the image's history, readable by anyone who pulls it.
        if SECRET_NAMES.search(key) or re.search(r"://[^/@\s]+@", value):
            raise ProvisionError(
                f"--build-arg {key} would store a secret in the image's history "
                "(`docker history` shows build arguments).",
                "Pass the Hub token as HF_TOKEN in the environment (it goes in as a build secret, "
                "never into a layer). Give index URLs without user:password@ or token@; for a "
                "private index, download the wheels on the host and build from them with "
                "--wheelhouse DIR --offline.",
            )
        out[key] = value
    return out


def _printer(con: Any) -> Any:
    """Streams the engine's progress: steps in bold, cache hits and output dimmed."""
    from rich.markup import escape

    def on_event(event: Any) -> None:
        if event.kind == "step":
            con.print(f"[bold]{escape(event.text)}[/]")
        elif event.kind == "cache":
            con.print(f"[green]  {escape(event.text)}[/]")
        elif event.kind == "error":
            con.print(f"[bold red]{escape(event.text)}[/]")
        else:
            con.print(f"[dim]  {escape(event.text)}[/]")

    return on_event


def docker(
    profile: Annotated[
        str | None, typer.Argument(help="Profile name (its lock: lockfiles/pylock.<name>.toml).")
    ] = None,
    all_builtins: Annotated[
        bool,
        typer.Option("--all", help="Render every built-in profile's Dockerfile into Dockerfiles/."),
    ] = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="With --all: only tell whether Dockerfiles/ is current."),
    ] = False,
    lock: Annotated[
        Path | None, typer.Option("--lock", help="The lockfile (default: the profile's).")
    ] = None,
    task: TaskOpt = Task.infer,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the Dockerfile (default Dockerfiles/).")
    ] = None,
    base_image: Annotated[
        str | None,
        typer.Option(
            "--base-image",
            help="Base image NAME:TAG[@sha256:...] instead of the one for the lock's CUDA variant.",
        ),
    ] = None,
    uv_image: Annotated[
        str | None,
        typer.Option("--uv-image", help="Image with /uv (default ghcr.io/astral-sh/uv)."),
    ] = None,
    bake_weights: Annotated[
        bool,
        typer.Option(
            "--bake-weights",
            help="Weights into the image (own layer, after packages).",
        ),
    ] = False,
    hf_endpoint: Annotated[
        str | None, typer.Option("--hf-endpoint", help="Hub (or mirror) the image uses.")
    ] = None,
    build: Annotated[
        bool, typer.Option("--build", help="Build the image through the docker SDK.")
    ] = False,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Image tag (repeatable; default provision/PROFILE:LOCKHASH)."),
    ] = None,
    push: Annotated[
        bool, typer.Option("--push", help="Push the tags to their registry after the build.")
    ] = False,
    wheelhouse: Annotated[
        list[Path] | None,
        typer.Option("--wheelhouse", help="Folder of wheels for the lock (repeatable)."),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="Fetch every package file here first; build with no network."
        ),
    ] = False,
    context: Annotated[
        Path | None,
        typer.Option("--context", help="Stage the build context in this folder (and keep it)."),
    ] = None,
    build_arg: Annotated[
        list[str] | None,
        typer.Option("--build-arg", help="KEY=VALUE, e.g. PIP_INDEX_URL=<mirror> (repeatable)."),
    ] = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Render a profile's Dockerfile from its lock; --build builds it (Docker or podman)."""
    from provision.errors import ProvisionError

    as_json = use_json(json_output)
    if all_builtins:
        from provision.docker.build import render_builtins

        results = render_builtins(out, check=check)

        def render_all(con: Any) -> None:
            for r in results:
                state = "current" if not r.changed else ("written" if r.written else "stale")
                con.print(f"{r.dockerfile}  [{state}]  FROM {r.base.ref}")

        emit(results, render_all, json_output)
        return
    if profile is None:
        raise ProvisionError("Name a profile, or pass --all.", "e.g. provision docker qwen2-vl-2b")
    from provision.docker.build import docker_profile

    on_event = None if as_json else _printer(console(stderr=True))
    result = docker_profile(
        profile,
        build=build,
        context_dir=context,
        wheelhouses=list(wheelhouse or []),
        offline=offline,
        tags=list(tag or []) or None,
        push=push,
        build_args=_build_args(build_arg),
        on_event=on_event,
        lock_file=lock,
        task=task.value,
        out_dir=out,
        base_image=base_image,
        uv_image=uv_image,
        bake_weights=bake_weights,
        hf_endpoint=hf_endpoint,
        profiles_dir=profiles_dir,
    )

    def render(con: Any) -> None:
        r = result.render
        con.print(f"[bold]{r.dockerfile}[/] ({'written' if r.written else 'unchanged'})")
        con.print(f"  from {r.lock_file} (sha256 {r.spec.lock_sha256[:12]})")
        con.print(f"  base {r.base.ref} ({r.base.chosen_by}); uv {r.uv_image}")
        con.print(f"  weights {'baked' if r.bake_weights else 'mounted at run time'}")
        for warning in r.warnings:
            con.print(f"[yellow]warning:[/] {warning}")
        if result.build:
            b = result.build
            con.print(
                f"[green]built[/] {', '.join(result.tags)}  {b['image_id'][:19]}  "
                f"{b['seconds']:.0f} s, {b['steps']} steps ({b['cached_steps']} from cache)"
            )
            con.print(f"  run: docker run --rm -v $HF_HOME:/data/hf {result.tags[0]}")
        elif result.context:
            con.print(f"  context staged in {result.context['path']}")
            con.print(f"  build: docker build -t {r.tag} {result.context['path']}")
        else:
            con.print(f"  build it: {r.command('--build')}  (tag {r.tag})", markup=False)
        for pushed in result.pushed:
            con.print(f"[green]pushed[/] {pushed['tag']}")

    emit(result, render, json_output)


def register(app: typer.Typer) -> None:
    app.command("docker")(docker)
