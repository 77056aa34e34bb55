"""`provision setup PROFILE`: check, lock, environment, weights, fixes, smoke; resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.choices import Task
from provision.cli.options import (
    ForceOpt,
    JsonFlag,
    ProfilesDir,
    SetupLockOpt,
    SkipCheckOpt,
    SourceOpt,
    TaskOpt,
    TorchIndexOpt,
    WheelhouseOpt,
)
from provision.cli.output import emit, use_json
from provision.cli.shared import progress_printer, show_partial, stage_table


def setup(
    profile: Annotated[str, typer.Argument(help="Profile name, e.g. qwen2-vl-2b.")],
    task: TaskOpt = Task.infer,
    env: Annotated[
        Path | None, typer.Option(help="Environment folder (default <data dir>/envs/PROFILE).")
    ] = None,
    from_lock: Annotated[
        Path | None,
        typer.Option("--from-lock", help="Rebuild exactly from this lockfile (someone else's)."),
    ] = None,
    lock: SetupLockOpt = None,
    source: SourceOpt = "auto",
    torch_index: TorchIndexOpt = None,
    wheelhouse: WheelhouseOpt = None,
    force: ForceOpt = None,
    skip_check: SkipCheckOpt = False,
    profiles_dir: ProfilesDir = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Say which lock it would use or make, and stop."),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Make this machine ready for PROFILE; a re-run continues where the last one stopped."""
    from provision.errors import ProvisionError
    from provision.setup import SetupOptions, run_setup
    from provision.setup import dry_run as plan_only

    options = SetupOptions(
        task=task.value,
        env=env,
        from_lock=from_lock,
        lock_file=lock,
        source=source,
        torch_index=torch_index,
        wheelhouse=wheelhouse,
        force=tuple(force or ()),
        skip_check=skip_check,
        profiles_dir=profiles_dir,
    )
    if dry_run:
        planned = plan_only(profile, options)
        emit(planned, lambda con: con.print("\n".join(planned.lines()), markup=False), json_output)
        return
    quiet = use_json(json_output)
    try:
        result = run_setup(profile, options, progress_printer(quiet))
    except ProvisionError as exc:
        show_partial(exc, render, quiet)
        raise
    emit(result, lambda con: render(result, con), json_output)


def render(result: Any, con: Any = None) -> None:
    from provision.cli.output import console

    con = con or console()
    stage_table(con, f"provision setup {result.profile}", result.stages)
    con.print(f"Environment: {result.env}\nLockfile: {result.lock_file}")
    if result.notes:
        from rich.markup import escape

        for note in result.notes:
            con.print(f"  note: {escape(note)}")


def register(app: typer.Typer) -> None:
    app.command(
        "setup",
        help="Make the machine ready: check, lock, env, weights, fixes, smoke.",
    )(setup)
