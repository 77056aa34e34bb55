"""The console entry point: runs the typer app and turns user errors into one clear message."""

from __future__ import annotations

import gc
import os
import sys

from provision.errors import ProvisionError


def main() -> None:
    # Start-up (the imports, typer's command) allocates tens of thousands of objects that live
    # to the end of the run: the cyclic collector scans them over and over and frees nothing,
    # 15-25 ms of each `provision lock` here (issue 17). It is off until the command is known;
    # cli.app turns it back on for every command but the short ones (app.COLLECTOR_OFF).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _main(collecting)
    finally:
        if collecting:
            gc.enable()
        started = sys.modules.get("provision.lock.early")
        if started is not None:
            started.close()  # a uv no lock claimed (a usage error, say) does not outlive us


def entry() -> None:
    """The console script and `python -m provision`: `main()`, then the exit.

    A short command (app.COLLECTOR_OFF) leaves without the interpreter's teardown, which frees
    every module and object one by one: 20-35 ms of each `provision lock` and `check` here (issue
    17). Its output is flushed and the atexit functions run first, as at a normal exit; a run with
    another thread alive, or any longer command, exits normally. The tests call `main()`."""
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    from provision.cli.output import short_run

    if not short_run() or _other_threads():
        sys.exit(code)
    status = _status(code)
    import atexit

    atexit._run_exitfuncs()  # weakref finalizers (temporary folders) and logging included
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # what Python's own exit returns when stdout cannot be flushed
    os._exit(status)


def _other_threads() -> bool:
    threading = sys.modules.get("threading")
    return threading is not None and threading.active_count() > 1


def _status(code: object) -> int:
    """The exit status `sys.exit(code)` gives: None is 0, an int itself, anything else is
    printed to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _main(collecting: bool) -> None:
    debug = os.environ.get("PROVISION_DEBUG") == "1"
    try:
        from provision.cli.quick import run_quick

        if run_quick(sys.argv[1:]):  # `provision lock ...`, read without typer (issue 17)
            return
        from provision.cli import app as cli_app

        cli_app.collect_after_start = collecting
        cli_app.app()
    except ProvisionError as exc:
        if debug:
            raise
        print_error(exc)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A folder that does not exist or cannot be written (a HOME, a lock dir, a data disk):
        # the stages write atomically, so what was there before is intact; say which path.
        if debug:
            raise
        error = os_error(exc)
        print_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        sys.exit(130)
    except SystemExit as exc:
        # typer turns Ctrl-C into a silent exit 130 (typer/core.py: `raise Exit(130) from e`).
        if exc.code == 130 and _from_ctrl_c(exc):
            sys.stderr.write(INTERRUPTED)
        raise


INTERRUPTED = "Interrupted. Partial downloads are kept: the same command again resumes them.\n"


def _from_ctrl_c(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):  # SystemExit <- typer's Exit <- KeyboardInterrupt
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def os_error(exc: OSError) -> ProvisionError:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or exc.__class__.__name__
    return ProvisionError(
        f"Cannot use {where}: {reason}." if where else f"{reason}: {exc}",
        "Check that the path exists and that you can write there (PROVISION_DEBUG=1 shows "
        "which step tried).",
    )


def print_error(exc: ProvisionError) -> None:
    from provision.cli.output import console, use_json

    if use_json():
        from provision.cli.output import emit_error

        emit_error(exc)  # the envelope, ok false, redacted (a failed setup prints its own)
        return
    from rich.markup import escape

    from provision.secrets import redact_text

    # The last guard: a client's message may quote the URL it was given, credentials and all
    # (output.error_json is the same guard for the envelope).
    err = console(stderr=True)
    err.print(f"[bold red]error:[/] {escape(redact_text(exc.message))}")
    if exc.hint:
        err.print(escape(redact_text(exc.hint)))
