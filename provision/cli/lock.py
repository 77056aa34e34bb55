"""`provision lock`: resolve a profile into a pinned, hashed PEP 751 lockfile, or check one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from provision.cli.options import (
    DriverOpt,
    GpuMemOpt,
    GpuOpt,
    GpusOpt,
    IgnorePipOpt,
    LockDirOpt,
    TorchIndexOpt,
    UpgradeOpt,
    VariantOpt,
)
from provision.cli.output import JsonFlag, emit, use_json
from provision.cli.profiles import ProfilesDir


def lock(
    profile: Annotated[
        str | None, typer.Argument(help="Profile name (or a path to a .toml file).")
    ] = None,
    task: Annotated[str, typer.Option("--task", help="infer, lora, qlora or full.")] = "infer",
    python: Annotated[
        str | None, typer.Option("--python", help="Target Python X.Y (default: the profile's).")
    ] = None,
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
    upgrade: UpgradeOpt = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Print the whole decision, step by step.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Only tell whether the lock is stale (no network)."),
    ] = False,
    all_profiles: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every built-in profile, every task, and every built-in direction (PyPI's "
            "torch build).",
        ),
    ] = False,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Pick the CUDA build of torch for a machine and pin everything into a lockfile."""
    from provision.errors import ProvisionError

    if check:
        _check(profile, task, output, lock_dir, all_profiles, profiles_dir, json_output)
        return
    if all_profiles:
        if profile:
            raise ProvisionError("--all locks every built-in profile: give no PROFILE with it.")
        _lock_all(lock_dir, upgrade, json_output)
        return
    if not profile:
        raise ProvisionError(
            "Which profile? e.g. provision lock qwen2.5-vl-7b",
            "`provision profiles` lists them; --all locks every built-in one.",
        )
    from provision.lock.locking import lock_profile

    try:
        result = lock_profile(
            profile,
            task,
            machine=lock_machine(gpu, gpu_mem, gpus, driver),
            python=python,
            torch_index=torch_index,
            output=output,
            variant=variant,
            use_pip_config=not ignore_pip_config,
            profiles_dir=profiles_dir,
            lock_dir=lock_dir,
            upgrade=upgrade,
        )
    except ProvisionError as exc:
        # The error says "run with --explain": with --explain, what was decided comes first.
        lines = getattr(exc, "explain_lines", None)
        if explain and lines and not use_json(json_output):
            from rich.markup import escape

            from provision.cli.output import console

            err = console(stderr=True)
            for line in lines:
                err.print(escape(line))
        raise

    def render(con: Any) -> None:
        from rich.markup import escape

        if explain:
            for line in result.explain():
                con.print(escape(line))
            return
        for rewrite in result.plan.rewrites:
            con.print(f"[yellow]rewrote[/] {escape(rewrite)}")
        for warning in result.warnings:
            con.print(f"[yellow]warning:[/] {escape(warning)}")
        indexes = result.table["indexes"]
        used = [f"torch from {indexes['torch']['url']} ({indexes['torch']['route']})"]
        used.append(f"others from {indexes['default']} ({indexes['default_from']})")
        used += [f"{e['url']} ({e['from']})" for e in indexes["extra"]]
        used += [f"find-links {f['location']} ({f['from']})" for f in indexes["find_links"]]
        con.print("indexes: " + escape("; ".join(used)))
        for note in result.resolution.notes:
            con.print(escape(note))
        con.print(f"[green]locked[/] {escape(result.summary())}")

    emit(result, render, json_output)


def lock_machine(gpu: str | None, gpu_mem: str | None, gpus: int | None, driver: str | None) -> Any:
    """The machine a lock is planned for (None: this one). Shared with `direction lock`."""
    if driver and gpu is None and gpu_mem is None:
        # A driver alone is enough to choose a build: plan for it without sizing any GPU.
        from provision.hardware.machine import Machine, cuda_for_driver

        return Machine([], driver, cuda_for_driver(driver), source="target", planned=True)
    from provision.cli.check import planned_machine

    return planned_machine(gpu, gpu_mem, gpus, driver)


def emit_checks(
    results: Sequence[Any], json_output: bool, label: Callable[[Any], str], what: str, hint: str
) -> None:
    """Print `--check` results (fresh or stale, and why); exit 1 when any is stale.
    `label(item)` names what each lock is for; `what` says what was checked, `hint` the fix."""
    from provision.errors import EXIT_FAILED, CheckFailed

    def render(con: Any) -> None:
        from rich.markup import escape

        for item in results:
            mark = "[green]fresh[/]" if item.fresh else "[red]stale[/]"
            con.print(f"{mark} {escape(str(item.path))} ({label(item)})")
            for reason in item.reasons:
                con.print(f"    {escape(reason)}")

    emit(results, render, json_output)
    stale = [r for r in results if not r.fresh]
    if stale:
        if use_json(json_output):
            raise typer.Exit(EXIT_FAILED)  # the JSON above already says which and why
        raise CheckFailed(f"{len(stale)} of {len(results)} {what} stale.", hint)


def emit_locked(
    items: Sequence[Any], json_output: bool, label: Callable[[Any], str], what: str
) -> None:
    """Print `--all` lock results (locked or failed, and the summary); exit 1 when any failed."""
    from provision.errors import EXIT_FAILED, CheckFailed

    def render(con: Any) -> None:
        from rich.markup import escape

        for item in items:
            mark = "[green]locked[/]" if item.ok else "[red]failed[/]"
            con.print(f"{mark} {label(item)}: {escape(item.message)}")

    emit(items, render, json_output)
    failed = [i for i in items if not i.ok]
    if failed:
        if use_json(json_output):
            raise typer.Exit(EXIT_FAILED)
        raise CheckFailed(f"{len(failed)} of {len(items)} {what} failed (listed above).")


def _check(
    profile: str | None,
    task: str,
    output: str | None,
    lock_dir: str | None,
    all_profiles: bool,
    profiles_dir: str | None,
    json_output: bool,
) -> None:
    from provision.errors import ProvisionError
    from provision.lock.locking import check_builtins, check_lock

    if all_profiles or not profile:
        if profile or output:
            raise ProvisionError("--check --all checks the built-in lockfiles: no PROFILE or -o.")
        results = check_builtins(lock_dir)
        # The built-in research directions' joint locks live beside these.
        from provision.directions_lock import check_builtin_directions

        results += check_builtin_directions(lock_dir)
    else:
        results = [check_lock(profile, task, output, profiles_dir, lock_dir)]
    emit_checks(
        results,
        json_output,
        lambda item: f"{item.profile}, {item.task}",
        "lockfile(s)",
        "Lock again: provision lock PROFILE [--task T] (or provision lock --all).",
    )


def _lock_all(lock_dir: str | None, upgrade: bool, json_output: bool) -> None:
    from provision.directions_lock import lock_builtin_directions
    from provision.lock.locking import lock_builtins

    items = lock_builtins(lock_dir, upgrade=upgrade) + lock_builtin_directions(
        lock_dir, upgrade=upgrade
    )
    emit_locked(items, json_output, lambda item: f"{item.profile} ({item.task})", "locks")


def register(app: typer.Typer) -> None:
    app.command(
        "lock",
        help="Pin torch (CUDA-matched) and everything else into a lockfile.",
    )(lock)
