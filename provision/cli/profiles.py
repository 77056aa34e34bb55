"""`provision profiles`: list the model profiles, or show one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provision.cli.options import JsonFlag, OfflineOpt, ProfilesDir
from provision.cli.output import emit
from provision.cli.shared import apply_offline

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
            "origin": p.origin,
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
    name: Annotated[
        str,
        typer.Argument(help="Profile name, a path to a .toml file, a repo id or a model folder."),
    ],
    profiles_dir: ProfilesDir = None,
    offline: OfflineOpt = False,
    json_output: JsonFlag = False,
) -> None:
    """Print one profile: whether curated or derived (and from which commit), its source, shape,
    packages per task, fixes and smoke prompt."""
    from provision.profiles import load_profile

    apply_offline(offline)
    profile = load_profile(name, profiles_dir)
    payload = {
        "name": profile.name,
        "path": str(profile.path),
        "origin": profile.origin,
        **profile.data,
    }

    def render(con: Any) -> None:
        con.print(f"[bold]{profile.title}[/]  ({profile.path})")
        con.print(f"Profile: {profile.origin}")
        con.print(profile.path.read_text(encoding="utf-8"), markup=False, highlight=False)

    emit(payload, render, json_output)


@group.command("add")
def add(
    repo: Annotated[
        str, typer.Argument(help="org/name[@revision], source:org/name, or a model folder.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Profile name (default: the repo's name).")
    ] = None,
    profiles_dir: ProfilesDir = None,
    offline: OfflineOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Derive a profile from the repository's metadata and write it as an editable TOML into
    your profile folder (--profiles-dir, PROVISION_PROFILES_DIR or ~/.config/provision/profiles)."""
    from provision.derive.add import add_profile
    from provision.profiles import load_profile_file

    apply_offline(offline)
    path = add_profile(repo, name, profiles_dir, force=force)
    profile = load_profile_file(path)
    derived = profile.derived or {}
    payload = {
        "name": profile.name,
        "path": str(path),
        "origin": profile.origin,
        "approximate": derived.get("approximate", []),
        "notes": derived.get("notes", []),
    }

    def render(con: Any) -> None:
        con.print(f"Wrote {path}: profile [bold]{profile.name}[/], {profile.origin}.")
        for line in payload["approximate"]:
            con.print(f"  approximate: {line}")
        for line in payload["notes"]:
            con.print(f"  note: {line}")
        con.print(f"Edit it freely; `provision check {profile.name}` uses it.")

    emit(payload, render, json_output)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="profiles")
