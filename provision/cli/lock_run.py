"""The body of `provision lock` (provision/cli/lock.py declares its options): typer-free, so that
provision/cli/quick.py can run it straight from the command line (issue 17)."""

from __future__ import annotations

from typing import Any

from provision.cli.output import emit, use_json
from provision.cli.shared import LockFlags, emit_checks, emit_locked


def run(
    profile: str | None = None,
    task: str = "infer",
    python: str | None = None,
    gpu: str | None = None,
    gpu_mem: str | None = None,
    gpus: int | None = None,
    driver: str | None = None,
    torch_index: str | None = None,
    variant: str | None = None,
    output: str | None = None,
    lock_dir: str | None = None,
    ignore_pip_config: bool = False,
    upgrade: bool = False,
    explain: bool = False,
    check: bool = False,
    all_profiles: bool = False,
    profiles_dir: str | None = None,
    json_output: bool = False,
) -> None:
    """`provision lock` with its options' values (`task` by its name): lock, check or lock all."""
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
        # The error says "run with --explain": with --explain, what was decided comes first.
        lines = getattr(exc, "explain_lines", None)
        if explain and lines and not use_json(json_output):
            from provision.cli.plain import PlainConsole

            err = PlainConsole(stderr=True)
            for line in lines:
                err.print(line, markup=False)
        raise

    def render(con: Any) -> None:
        """Through provision.cli.plain: a lock does not import rich (issue 17)."""
        from provision.cli.plain import escape

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

    emit(result, render, json_output, plain=True)


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
        from provision.directions.lock import check_builtin_directions

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
    from provision.directions.lock import lock_builtin_directions
    from provision.lock.locking import lock_builtins

    items = lock_builtins(lock_dir, upgrade=upgrade) + lock_builtin_directions(
        lock_dir, upgrade=upgrade
    )
    emit_locked(items, json_output, lambda item: f"{item.profile} ({item.task})", "locks")
