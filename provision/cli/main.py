"""The console entry point: runs the typer app and turns user errors into one clear message."""

from __future__ import annotations

import os
import sys

from provision.errors import ProvisionError


def main() -> None:
    from provision.cli.app import app

    try:
        app()
    except ProvisionError as exc:
        if os.environ.get("PROVISION_DEBUG") == "1":
            raise
        print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)


def print_error(exc: ProvisionError) -> None:
    from provision.cli.output import console, use_json

    if use_json():
        import json

        payload = {"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    from rich.markup import escape

    err = console(stderr=True)
    err.print(f"[bold red]error:[/] {escape(exc.message)}")
    if exc.hint:
        err.print(escape(exc.hint))
