"""`provision env [PROFILE]`: the hub variables as shell code, for `eval "$(provision env)"`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import JsonFlag, ProfilesDir, SourceOpt
from provision.cli.output import emit, use_json
from provision.errors import ProvisionError


def env(
    profile: Annotated[
        str | None, typer.Argument(help="Profile whose repository `--source auto` probes for.")
    ] = None,
    shell: Annotated[
        str | None, typer.Option("--shell", help="bash, zsh or fish (default: from $SHELL).")
    ] = None,
    persist: Annotated[
        bool,
        typer.Option(
            "--persist",
            help="Also write them into your shell's rc file and the virtual environment's "
            "activate script (a marked block; running again replaces it).",
        ),
    ] = False,
    source: SourceOpt = "auto",
    venv: Annotated[
        Path | None,
        typer.Option("--venv", help="Virtual environment to persist into (default: $VIRTUAL_ENV)."),
    ] = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Print the hub variables (HF_HOME, HF_ENDPOINT, MODELSCOPE_CACHE) as shell code."""
    from provision.secrets import redact_text
    from provision.settings import (
        autodl_notes,
        detect_shell,
        hub_environment,
        persist_environment,
        render_exports,
    )

    shell = shell or detect_shell()
    chosen: Any = source
    reason = None
    if source == "auto":
        from provision.hub.sources import auto_candidates, choose_source

        repos: dict[str, str | None] = {}
        has_ms = True
        if profile:
            from provision.profiles import load_profile

            loaded = load_profile(profile, profiles_dir)
            repos = {"hf": loaded.hf_repo, "modelscope": loaded.modelscope_repo}
            has_ms = bool(loaded.modelscope_repo)
        try:
            choice = choose_source(auto_candidates(has_modelscope=has_ms), repos)
            chosen, reason = choice.source, choice.reason
        except ProvisionError as exc:
            # The caches still belong on the data disk: print those, and say why no endpoint.
            reason = f"no source answered ({exc.message}); HF_ENDPOINT left as it is"
    variables = hub_environment(None, chosen)
    notes = autodl_notes()
    persisted: list[str] = []
    if persist:
        target_venv = venv or (
            Path(os.environ["VIRTUAL_ENV"]) if os.getenv("VIRTUAL_ENV") else None
        )
        persisted = persist_environment(variables, shell, venv=target_venv).to_json()
    payload = {
        "env": variables,
        "shell": shell,
        # a --source URL as given may carry a password: the endpoint above is the public one
        "source": redact_text(str(getattr(chosen, "name", chosen))),
        "reason": reason,
        "persisted": persisted,
        "notes": notes,
    }

    def render(con: Any) -> None:
        # stdout is shell code only (it is eval'd); everything for people goes to stderr.
        sys.stdout.write(render_exports(variables, shell))
        err = sys.stderr
        if reason:
            err.write(f"# source: {reason}\n")
        for path in persisted:
            err.write(f"# written to {path}\n")
        for note in notes:
            err.write(f"# {note}\n")

    emit(payload, render, use_json(json_output))


def register(app: typer.Typer) -> None:
    app.command("env")(env)
