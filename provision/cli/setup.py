"""`provision setup PROFILE`: check, lock, environment, weights, fixes, smoke; resumable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from provision.cli.options import (
    ForceOpt,
    SetupLockOpt,
    SkipCheckOpt,
    SourceOpt,
    TorchIndexOpt,
    WheelhouseOpt,
)
from provision.cli.output import JsonFlag, emit, use_json
from provision.cli.profiles import ProfilesDir

if TYPE_CHECKING:
    from provision.setup import StageReport


def setup(
    profile: Annotated[str, typer.Argument(help="Profile name, e.g. qwen2-vl-2b.")],
    task: Annotated[str, typer.Option(help="infer, lora, qlora or full.")] = "infer",
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
        task=task,
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


def progress_printer(quiet: bool) -> Callable[[StageReport], None]:
    """Setup's progress callback: one line a stage as it ends (nothing under --json)."""

    def progress(report: StageReport) -> None:
        if quiet:
            return
        from provision.cli.output import console

        mark = {"done": "ok", "skipped": "--", "failed": "!!", "not run": "  "}[report.status]
        console().print(f"[{mark}] {report.name}: {report.detail}", markup=False)

    return progress


def show_partial(exc: Exception, render_result: Callable[[Any], None], quiet: bool) -> None:
    """A setup that failed part-way: print how far it got (the error follows), unless --json."""
    partial = getattr(exc, "setup_result", None)
    if partial is not None and not quiet:
        render_result(partial)


def stage_table(con: Any, title: str, stages: Any) -> None:
    """The stages as a table: what each did and how long it took."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in ("stage", "status", "what it did", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for stage in stages:
        # escaped: a detail such as "torch 2.13.0 [cpu]" is text, not rich markup
        table.add_row(stage.name, stage.status, escape(stage.detail), f"{stage.seconds:.1f}")
    con.print(table)


def render(result: Any, con: Any = None) -> None:
    from provision.cli.output import console

    con = con or console()
    stage_table(con, f"provision setup {result.profile}", result.stages)
    con.print(f"Environment: {result.env}\nLockfile: {result.lock_file}")


def register(app: typer.Typer) -> None:
    app.command(
        "setup",
        help="Make the machine ready: check, lock, env, weights, fixes, smoke.",
    )(setup)
