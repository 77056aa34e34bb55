"""`provision patch status|apply|revert [FIX]`: known library fixes in an environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import JsonFlag
from provision.cli.output import emit_result

FixArg = Annotated[
    str | None,
    typer.Argument(help="Fix id, e.g. group-beam-search-dtype (default: the lock's list, or all)."),
]
EnvOpt = Annotated[
    Path | None, typer.Option("--env", help="Virtual environment to look in (its bin/python).")
]
PythonOpt = Annotated[
    Path | None,
    typer.Option("--python", help="Interpreter whose packages to look in (instead of --env)."),
]
LockOpt = Annotated[
    Path | None,
    typer.Option(
        "--lock", help="Lockfile that records the patched files' hashes ([tool.provision.fixes])."
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option("--verify", help="Also run each fix's own check with the environment's Python."),
]

group = typer.Typer(
    help="Known library fixes: status, apply, revert.",
    no_args_is_help=True,
)


def _render(results: list[Any], title: str) -> Any:
    def render(con: Any) -> None:
        from rich.table import Table

        table = Table(title=title)
        for col in ("fix", "package", "state", "done"):
            table.add_column(col, no_wrap=True)
        table.add_column("why", overflow="fold")
        for r in results:
            why = r.reason
            if r.check is not None:
                why += f"\ncheck: {'passed' if r.check.get('ok') else 'FAILED'}"
                if r.check.get("error"):
                    why += f" ({r.check['error']})"
            table.add_row(
                r.fix,
                f"{r.package} {r.version or '-'}",
                r.state,
                "" if r.action == "none" else r.action,
                why + (f"\n{r.file}" if r.file else ""),
            )
        con.print(table)

    return render


def _finish(results: list[Any], title: str, json_output: bool) -> None:
    from provision.errors import CheckFailed

    failed = [r.fix for r in results if r.check is not None and r.check.get("ok") is False]
    failure = CheckFailed(f"The check of {', '.join(failed)} failed.") if failed else None
    emit_result(results, _render(results, title), json_output, failure)


@group.command("status")
def status(
    fix: FixArg = None,
    env: EnvOpt = None,
    python: PythonOpt = None,
    lock: LockOpt = None,
    verify: VerifyOpt = False,
    json_output: JsonFlag = False,
) -> None:
    """Show each fix's state: patched, original, changed (by someone else) or not-applicable."""
    from provision.envs import python_for
    from provision.patches import fix_status

    interpreter = python_for(env, python)
    results = fix_status(interpreter, [fix] if fix else None, lock, verify_fixes=verify)
    _finish(results, f"Library fixes in {interpreter}", json_output)


@group.command("apply")
def apply(
    fix: FixArg = None,
    env: EnvOpt = None,
    python: PythonOpt = None,
    lock: LockOpt = None,
    verify: VerifyOpt = False,
    json_output: JsonFlag = False,
) -> None:
    """Apply fixes (idempotent; keeps a backup, drops stale bytecode, records hashes in --lock)."""
    from provision.envs import python_for
    from provision.patches import apply_fixes

    interpreter = python_for(env, python)
    results = apply_fixes(
        interpreter, [fix] if fix else None, lock, verify_fixes=verify, into_lock=True
    )
    _finish(results, f"Library fixes applied in {interpreter}", json_output)


@group.command("revert")
def revert(
    fix: FixArg = None,
    env: EnvOpt = None,
    python: PythonOpt = None,
    lock: LockOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Put the released files back, byte for byte, and drop their records from --lock."""
    from provision.envs import python_for
    from provision.patches import revert_fixes

    interpreter = python_for(env, python)
    results = revert_fixes(interpreter, [fix] if fix else None, lock, into_lock=True)
    _finish(results, f"Library fixes reverted in {interpreter}", json_output)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="patch")
