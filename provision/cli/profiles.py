"""`provision profiles`: list the model profiles, or show one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provision.cli.options import ProfilesDir
from provision.cli.output import JsonFlag, emit

group = typer.Typer(
    help="List model profiles, or show one.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@group.callback(invoke_without_command=True)
def _list(
    ctx: typer.Context, profiles_dir: ProfilesDir = None, json_output: JsonFlag = False
) -> None:
    """List the profiles: built-in ones and those in --profiles-dir."""
    if ctx.invoked_subcommand is not None:
        return
    from provision.profiles import list_profiles

    found = list_profiles(profiles_dir)
    rows = [
        {
            "name": p.name,
            "title": p.title,
            "huggingface": p.hf_repo,
            "params_b": round(p.params["total"] / 1e9, 2),
            "weights_gib": round(p.weights["bytes"] / 1024**3, 2),
            "tasks": list(p.tasks),
            "gated": p.gated,
            "builtin": p.builtin,
            "path": str(p.path),
        }
        for p in found
    ]

    def render(con: Any) -> None:
        from rich.table import Table

        table = Table(title="Model profiles")
        for col in ("name", "model", "params", "weights", "tasks", "gated", "from"):
            table.add_column(col)
        for row in rows:
            table.add_row(
                row["name"],
                row["huggingface"],
                f"{row['params_b']:.2f} B",
                f"{row['weights_gib']:.1f} GiB",
                ", ".join(row["tasks"]),
                "yes" if row["gated"] else "",
                "built-in" if row["builtin"] else row["path"],
            )
        con.print(table)

    emit(rows, render, json_output)


@group.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name (or a path to a .toml file).")],
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Print one profile: its source, shape, packages per task, fixes and smoke prompt."""
    from provision.profiles import load_profile

    profile = load_profile(name, profiles_dir)
    payload = {"name": profile.name, "path": str(profile.path), **profile.data}

    def render(con: Any) -> None:
        con.print(f"[bold]{profile.title}[/]  ({profile.path})")
        con.print(profile.path.read_text(encoding="utf-8"), markup=False, highlight=False)

    emit(payload, render, json_output)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="profiles")
