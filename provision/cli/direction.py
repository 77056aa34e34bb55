"""`provision direction list|show|check|lock|setup|add|remove`: one environment per direction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.choices import value
from provision.cli.options import (
    BatchOpt,
    DriverOpt,
    ForceOpt,
    GpuMemOpt,
    GpuOpt,
    GpusOpt,
    IgnorePipOpt,
    JsonFlag,
    LockDirOpt,
    MemberTaskOpt,
    ProfilesDir,
    SeqOpt,
    SetupLockOpt,
    SkipCheckOpt,
    SourceOpt,
    TasksOpt,
    TorchIndexOpt,
    UpgradeOpt,
    VariantOpt,
    WheelhouseOpt,
)
from provision.cli.output import emit, emit_error, emit_result, use_json
from provision.cli.shared import (
    LockFlags,
    emit_checks,
    emit_locked,
    planned_machine,
    progress_printer,
    show_partial,
    stage_table,
)

DirectionsDir = Annotated[
    str | None,
    typer.Option(
        "--directions-dir",
        envvar="PROVISION_DIRECTIONS_DIR",
        help="Folder of your own direction TOML files (searched before the machine's and the "
        "built-ins).",
    ),
]
NameArg = Annotated[str, typer.Argument(help="Direction name (or a path to a .toml file).")]
Python = Annotated[
    str | None, typer.Option("--python", help="Target Python X.Y (default: the direction's).")
]

group = typer.Typer(
    help="Research directions: several profiles sharing one environment, lock and cache.",
    no_args_is_help=True,
)


def _load(name: str, directions_dir: str | None, profiles_dir: str | None) -> Any:
    from provision.directions import load_direction

    return load_direction(name, directions_dir, profiles_dir)


def _conflict_exit(exc: Any, json_output: bool) -> None:
    """A conflict under --json: the whole analysis as the result, exit 1 (people get the
    message)."""
    from provision.directions.conflict import DirectionConflict

    if isinstance(exc, DirectionConflict) and use_json(json_output):
        emit_error(exc, {"conflict": exc.to_json()})
        raise typer.Exit(exc.exit_code)


def _members_text(direction: Any) -> str:
    return ", ".join(f"{m.profile} ({'+'.join(m.tasks)})" for m in direction.members)


# --- list / show ----------------------------------------------------------------------------------


@group.command("list")
def list_cmd(
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    lock_dir: LockDirOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """List the directions (members, lock state) and the environments on this machine."""
    from provision.directions import list_directions
    from provision.directions.lock import check_direction_lock
    from provision.env_registry import registered, registry_path

    rows = []
    for direction in list_directions(directions_dir, profiles_dir):
        check = check_direction_lock(direction, None, profiles_dir, lock_dir)
        rows.append(
            {
                "name": direction.name,
                "description": direction.description,
                "members": {m.profile: list(m.tasks) for m in direction.members},
                "builtin": direction.builtin,
                "path": str(direction.path),
                "lock": str(check.path),
                "lock_state": "fresh" if check.fresh else _lock_state(check),
            }
        )
    notes: list[str] = []  # a damaged registry, repaired
    envs = registered(registry_path(), notes)
    payload = {"directions": rows, "environments": [e.to_json() for e in envs], "notes": notes}

    def render(con: Any) -> None:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="Research directions")
        for col in ("name", "members (tasks)", "lock", "from"):
            table.add_column(col)
        for row in rows:
            members = ", ".join(f"{p} ({'+'.join(t)})" for p, t in row["members"].items())
            table.add_row(
                row["name"],
                members,
                row["lock_state"],
                "built-in" if row["builtin"] else row["path"],
            )
        con.print(table)
        if envs:
            envs_table = Table(title=f"Environments on this machine ({registry_path()})")
            for col in ("environment", "for", "status", "users", "updated"):
                envs_table.add_column(col)
            for entry in envs:
                users = ", ".join(
                    f"{u} ({', '.join(v.get('directions', [])) or entry.name})"
                    for u, v in entry.users.items()
                )
                where = str(entry.path) + ("" if entry.exists else " (gone)")
                envs_table.add_row(
                    where, f"{entry.kind} {entry.name}", entry.status, users, entry.updated
                )
            con.print(envs_table)
        for note in notes:
            con.print(f"  note: {escape(note)}")

    emit(payload, render, json_output)


def _lock_state(check: Any) -> str:
    if check.reasons and check.reasons[0].endswith("does not exist"):
        return "not locked"
    return "stale"


@group.command("show")
def show(
    name: NameArg,
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    lock_dir: LockDirOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """One direction: members and tasks, packages, where its environment lives, its lock."""
    from provision.directions.lock import check_direction_lock
    from provision.env_registry import registered, registry_path
    from provision.errors import ProvisionError

    direction = _load(name, directions_dir, profiles_dir)
    check = check_direction_lock(direction, None, profiles_dir, lock_dir)
    try:
        env = direction.env_location()
        entry = next((e for e in registered(registry_path()) if e.path == env), None)
    except ProvisionError:
        env, entry = None, None
    payload = {
        **direction.to_json(),
        "env": str(env) if env else None,
        "lock": check.to_json(),
        "registry": entry.to_json() if entry else None,
    }

    def render(con: Any) -> None:
        from rich.markup import escape

        con.print(f"[bold]{escape(direction.name)}[/]  ({escape(str(direction.path))})")
        con.print(escape(direction.description))
        con.print(f"Members: {escape(_members_text(direction))}")
        if direction.packages:
            con.print(f"Packages: {escape(', '.join(direction.packages))}")
        if direction.datasets:
            con.print(f"Datasets: {escape(', '.join(direction.datasets))} (docs/datasets.md)")
        con.print(f"Python: {direction.python or 'the members common one'}")
        sharing = "shared" if direction.shared else "private"
        if direction.group:
            sharing += f" with group {direction.group}"
        con.print(f"Environment: {env} ({sharing})")
        state = "fresh" if check.fresh else _lock_state(check)
        con.print(f"Lock: {escape(str(check.path))} ({state})")
        for reason in check.reasons:
            con.print(f"    {escape(reason)}")
        if entry:
            users = ", ".join(sorted(entry.users))
            con.print(f"Registry: {entry.status}, set up by {users}; last {entry.updated}")
        con.print()
        con.print(direction.text, markup=False, highlight=False, soft_wrap=True)

    emit(payload, render, json_output)


# --- check ----------------------------------------------------------------------------------------


@group.command("check")
def check(
    name: NameArg,
    task: MemberTaskOpt = None,
    batch: BatchOpt = 1,
    seq: SeqOpt = None,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: GpusOpt = None,
    driver: DriverOpt = None,
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Does every member fit this machine (or a planned one), for each task? Exit 1 if not."""
    from provision.directions.setup import check_direction
    from provision.errors import CheckFailed

    direction = _load(name, directions_dir, profiles_dir)
    report = check_direction(
        direction,
        planned_machine(gpu, gpu_mem, gpus, driver),
        profiles_dir,
        value(task),
        batch,
        seq,
    )

    def render(con: Any) -> None:
        from rich.markup import escape
        from rich.table import Table

        machine = report.machine
        where = "planned" if machine.planned else f"this machine, read through {machine.source}"
        con.print(f"[bold]{escape(direction.name)}[/] on {escape(machine.describe())} ({where})")
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("member", "task", "stack", "GiB/GPU", "usable", "verdict", "to fit"):
            table.add_column(col, no_wrap=col in ("member", "verdict"))
        style = {"fits": "green", "tight": "yellow", "does not fit": "red"}
        for item in report.members:
            fit = item.report.fit
            usable = min((g.usable for g in fit.gpus), default=0.0)
            table.add_row(
                item.profile,
                item.task,
                fit.request.stack or "",
                f"{fit.estimate.per_gpu / 1024**3:.1f}",
                f"{usable / 1024**3:.1f}" if fit.gpus else "no GPU",
                f"[{style.get(fit.verdict, 'red')}]{fit.verdict}[/]",
                escape(fit.suggestions[0].text) if fit.suggestions else "",
            )
        con.print(table)
        free = "?" if report.disk_free is None else f"{report.disk_free / 1024**3:.1f}"
        state = "[green]enough room[/]" if report.disk_enough else "[red]not enough room[/]"
        con.print(
            f"Data disk: {escape(report.disk_where)}: {free} GiB free, all members' weights "
            f"need {report.disk_need / 1024**3:.1f} GiB — {state}"
            + (" (this machine; the plan does not depend on it)" if machine.planned else "")
        )
        verdict = "[bold green]fits[/]" if report.ok else "[bold red]does not fit[/]"
        con.print(f"Direction: {verdict}")

    failure = None if report.ok else CheckFailed(f"Not every member of {direction.name} fits.")
    emit_result(report, render, json_output, failure)


# --- lock -----------------------------------------------------------------------------------------


@group.command("lock")
def lock(
    name: Annotated[str | None, typer.Argument(help="Direction name.")] = None,
    python: Python = None,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: GpusOpt = None,
    driver: DriverOpt = None,
    torch_index: TorchIndexOpt = None,
    variant: VariantOpt = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Lock file to write (or to --check).")
    ] = None,
    lock_dir: LockDirOpt = None,
    ignore_pip_config: IgnorePipOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only tell whether the lock is stale (no network).")
    ] = False,
    all_directions: Annotated[
        bool,
        typer.Option("--all", help="Every built-in direction (PyPI's torch build, PyPI only)."),
    ] = False,
    upgrade: UpgradeOpt = False,
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Resolve every member's tasks together into lockfiles/pylock.direction-NAME.toml."""
    from provision.errors import ProvisionError

    if check:
        _check_locks(
            name, output, lock_dir, all_directions, directions_dir, profiles_dir, json_output
        )
        return
    if all_directions:
        if name:
            raise ProvisionError("--all locks every built-in direction: give no NAME with it.")
        _lock_all(lock_dir, upgrade, json_output)
        return
    if not name:
        raise ProvisionError(
            "Which direction? e.g. provision direction lock okvqa-vllm-swift",
            "`provision direction list` lists them; --all locks every built-in one.",
        )
    from provision.directions.lock import lock_direction

    direction = _load(name, directions_dir, profiles_dir)
    try:
        result = lock_direction(
            direction,
            output=output,
            profiles_dir=profiles_dir,
            upgrade=upgrade,
            **LockFlags(
                python,
                gpu,
                gpu_mem,
                gpus,
                driver,
                torch_index,
                variant,
                lock_dir,
                ignore_pip_config,
            ).kwargs(),
        )
    except ProvisionError as exc:
        _conflict_exit(exc, json_output)
        raise

    def render(con: Any) -> None:
        from rich.markup import escape

        for rewrite in result.plan.rewrites:
            con.print(f"[yellow]rewrote[/] {escape(rewrite)}")
        for note in result.resolution.notes:
            con.print(escape(note))
        fixes = result.table["fixes"]["apply"]
        con.print(f"fixes for all members: {', '.join(fixes) or 'none'}")
        if result.kept:
            con.print("kept from the previous lock: " + escape(", ".join(result.kept)))
        con.print(f"[green]locked[/] {escape(result.summary())} in {result.seconds:.1f} s")

    emit(result, render, json_output)


def _check_locks(
    name: str | None,
    output: str | None,
    lock_dir: str | None,
    all_directions: bool,
    directions_dir: str | None,
    profiles_dir: str | None,
    json_output: bool,
) -> None:
    from provision.directions.lock import check_builtin_directions, check_direction_lock
    from provision.errors import ProvisionError

    if all_directions or not name:
        if name or output:
            raise ProvisionError("--check --all checks the built-in direction locks: no NAME.")
        results = check_builtin_directions(lock_dir)
    else:
        direction = _load(name, directions_dir, profiles_dir)
        results = [check_direction_lock(direction, output, profiles_dir, lock_dir)]
    emit_checks(
        results,
        json_output,
        lambda item: f"direction {item.profile}",
        "direction lockfile(s)",
        "Lock again: provision direction lock NAME (or provision direction lock --all).",
    )


def _lock_all(lock_dir: str | None, upgrade: bool, json_output: bool) -> None:
    from provision.directions.lock import lock_builtin_directions

    items = lock_builtin_directions(lock_dir, upgrade=upgrade)
    emit_locked(items, json_output, lambda item: f"direction {item.profile}", "direction locks")


# --- setup ----------------------------------------------------------------------------------------


@group.command("setup")
def setup(
    name: NameArg,
    env: Annotated[
        Path | None,
        typer.Option(help="Environment folder (default: the direction's, on the data disk)."),
    ] = None,
    from_lock: Annotated[
        Path | None,
        typer.Option("--from-lock", help="Rebuild exactly from this direction lockfile."),
    ] = None,
    lock_file: SetupLockOpt = None,
    source: SourceOpt = "auto",
    torch_index: TorchIndexOpt = None,
    variant: VariantOpt = None,
    python: Python = None,
    ignore_pip_config: IgnorePipOpt = False,
    wheelhouse: WheelhouseOpt = None,
    force: ForceOpt = None,
    skip_check: SkipCheckOpt = False,
    datasets: Annotated[
        bool,
        typer.Option(
            "--datasets/--no-datasets",
            help="Fetch and pin the direction's datasets with the weights (docs/datasets.md).",
        ),
    ] = True,
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """One environment for the whole direction: weights, datasets, fixes and a smoke for every
    member."""
    from provision.directions.setup import LockOptions, setup_direction
    from provision.errors import ProvisionError
    from provision.setup import SetupOptions

    direction = _load(name, directions_dir, profiles_dir)
    options = SetupOptions(
        env=env,
        from_lock=from_lock,
        lock_file=lock_file,
        source=source,
        torch_index=torch_index,
        wheelhouse=wheelhouse,
        force=tuple(force or ()),
        skip_check=skip_check,
        profiles_dir=profiles_dir,
        datasets=datasets,
    )
    lock_options = LockOptions(python, torch_index, variant, not ignore_pip_config)
    quiet = use_json(json_output)
    try:
        result = setup_direction(direction, options, lock_options, progress_printer(quiet))
    except ProvisionError as exc:
        _conflict_exit(exc, json_output)
        show_partial(exc, _render_setup, quiet)
        raise
    emit(result, lambda con: _render_setup(result, con), json_output)


def _render_setup(result: Any, con: Any = None) -> None:
    from rich.markup import escape

    from provision.cli.output import console

    con = con or console()
    stage_table(con, f"provision direction setup {result.direction}", result.setup.stages)
    con.print(f"Environment: {result.env}\nLockfile: {result.lock}")
    con.print(f"Weights cache: {result.shared.hf_home}")
    for note in [*result.shared.notes, *getattr(result, "notes", [])]:
        con.print(f"  note: {escape(note)}")
    if result.entry is not None:
        con.print(f"Registered in {result.registry} for {', '.join(sorted(result.entry.users))}")


# --- add / remove ---------------------------------------------------------------------------------


def _membership(
    action: str,
    name: str,
    profile: str,
    tasks: list[str] | None,
    note: str | None,
    no_lock: bool,
    lock_kwargs: dict[str, Any],
    directions_dir: str | None,
    profiles_dir: str | None,
    json_output: bool,
) -> None:
    from provision.directions.membership import change_membership
    from provision.errors import ProvisionError

    try:
        change = change_membership(
            name,
            action,
            profile,
            tuple(tasks or ["infer"]),
            note,
            relock=not no_lock,
            directions_dir=directions_dir,
            profiles_dir=profiles_dir,
            lock_kwargs=lock_kwargs,
        )
    except ProvisionError as exc:
        _conflict_exit(exc, json_output)
        raise

    def render(con: Any) -> None:
        from rich.markup import escape

        verb = "added" if action == "add" else "removed"
        what = f"{profile} ({'+'.join(change.tasks)})" if action == "add" else profile
        con.print(f"[green]{verb}[/] {escape(what)}: {escape(str(change.path))}")
        for note_line in change.notes:
            con.print(f"  note: {escape(note_line)}")
        members = ", ".join(f"{p} ({'+'.join(t)})" for p, t in change.members.items())
        con.print(f"members: {escape(members)}")
        if change.lock is not None:
            con.print(f"[green]locked[/] {escape(change.lock.summary())}")
        else:
            con.print("not locked (--no-lock): run `provision direction lock` before setup")

    emit(change, render, json_output)


NoLock = Annotated[bool, typer.Option("--no-lock", help="Change the file only; lock later.")]


@group.command("add")
def add(
    name: NameArg,
    profile: Annotated[str, typer.Argument(help="Profile to add, e.g. qwen2.5-vl-7b.")],
    task: TasksOpt = None,
    note: Annotated[str | None, typer.Option(help="Why it is in the direction.")] = None,
    no_lock: NoLock = False,
    python: Python = None,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: GpusOpt = None,
    driver: DriverOpt = None,
    torch_index: TorchIndexOpt = None,
    variant: VariantOpt = None,
    lock_dir: LockDirOpt = None,
    ignore_pip_config: IgnorePipOpt = False,
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Add a member (or tasks to one) and lock again; refused, file unchanged, on a conflict."""
    kwargs = LockFlags(
        python, gpu, gpu_mem, gpus, driver, torch_index, variant, lock_dir, ignore_pip_config
    ).kwargs()
    _membership(
        "add",
        name,
        profile,
        [t.value for t in task or []] or None,
        note,
        no_lock,
        kwargs,
        directions_dir,
        profiles_dir,
        json_output,
    )


@group.command("remove")
def remove(
    name: NameArg,
    profile: Annotated[str, typer.Argument(help="Member to remove.")],
    no_lock: NoLock = False,
    python: Python = None,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: GpusOpt = None,
    driver: DriverOpt = None,
    torch_index: TorchIndexOpt = None,
    variant: VariantOpt = None,
    lock_dir: LockDirOpt = None,
    ignore_pip_config: IgnorePipOpt = False,
    directions_dir: DirectionsDir = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Remove a member and lock again (its weights stay in the shared cache)."""
    kwargs = LockFlags(
        python, gpu, gpu_mem, gpus, driver, torch_index, variant, lock_dir, ignore_pip_config
    ).kwargs()
    _membership(
        "remove",
        name,
        profile,
        None,
        None,
        no_lock,
        kwargs,
        directions_dir,
        profiles_dir,
        json_output,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="direction")
