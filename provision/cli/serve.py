"""`provision serve PROFILE`: the stack's OpenAI-compatible server with the fit's limits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import (
    CacheMaxEntryOpt,
    EnforceEagerOpt,
    GpuMemOpt,
    GpuOpt,
    GpusOpt,
    JsonFlag,
    LimitMmOpt,
    MaxNumSeqsOpt,
    ProfilesDir,
    parse_limit_mm,
)
from provision.cli.output import emit, use_json


def _render_plan(plan: Any) -> Any:
    def render(con: Any) -> None:
        version = f" {plan.version}" if plan.version else ""
        con.print(
            f"serve {plan.profile} with {plan.stack}{version} (fit: {plan.fit_verdict})",
            markup=False,
        )
        con.print(f"{plan.repo_id} @ {plan.commit or 'unpinned'}", markup=False)
        for key, val in plan.shown_env().items():
            con.print(f"  {key}={val}", markup=False)
        con.print(plan.line, markup=False, soft_wrap=True)
        for note in plan.notes:
            con.print(f"note: {note}", markup=False)

    return render


def _render_ready(server: Any) -> Any:
    def render(con: Any) -> None:
        plan = server.plan
        con.print(f"ready: {plan.base_url}  (model {plan.repo_id})", markup=False)
        con.print(f"log: {server.log_path}", markup=False)
        con.print("try it (photo.jpg: any image of yours):", markup=False)
        con.print(plan.curl(), markup=False, soft_wrap=True)
        con.print("Ctrl-C stops the server.", markup=False)

    return render


def serve(
    profile: Annotated[
        str, typer.Argument(help="Profile name (qwen2-vl-2b) or hub repo id (org/name).")
    ],
    stack: Annotated[
        str | None,
        typer.Option(
            "--stack",
            help="vllm, lmdeploy, sglang or transformers (default: the profile's infer stack).",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    print_only: Annotated[
        bool, typer.Option("--print", help="Show the command and start nothing.")
    ] = False,
    env: Annotated[
        Path | None,
        typer.Option("--env", help="The environment to serve from (default: the registry's)."),
    ] = None,
    lock: Annotated[
        Path | None,
        typer.Option("--lock", help="Lockfile whose weights to serve (default: the env's)."),
    ] = None,
    context: Annotated[
        int | None,
        typer.Option("--context", help="Max model length in tokens (default: the fit's)."),
    ] = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    limit_mm: LimitMmOpt = None,
    enforce_eager: EnforceEagerOpt = False,
    cache_max_entry_count: CacheMaxEntryOpt = None,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: GpusOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the health check.")
    ] = 1800.0,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Start the model's OpenAI-compatible server in its environment; Ctrl-C stops it."""
    from provision.cli.shared import planned_machine
    from provision.serve.plan import plan_serve

    limit_images, limit_videos = parse_limit_mm(limit_mm)
    overrides = {
        "context": context,
        "max_num_seqs": max_num_seqs,
        "limit_images": limit_images,
        "limit_videos": limit_videos,
        "enforce_eager": enforce_eager,
        "cache_max_entry_count": cache_max_entry_count,
    }
    plan = plan_serve(
        profile,
        stack=stack,
        host=host,
        port=port,
        env=env,
        lock=lock,
        machine=planned_machine(gpu, gpu_mem, gpus, None),
        overrides=overrides,
        profiles_dir=profiles_dir,
        print_only=print_only,
    )
    as_json = use_json(json_output)
    if print_only:
        emit(plan, _render_plan(plan), as_json)
        return
    from provision.serve.run import serve_until_stopped

    if not as_json:
        _render_plan(plan)(_stderr())

    def ready(server: Any) -> None:
        emit(plan, _render_ready(server), as_json)
        sys.stdout.flush()

    code = serve_until_stopped(plan, ready, timeout=timeout)
    raise typer.Exit(code)


def _stderr() -> Any:
    from provision.cli.output import console

    return console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
