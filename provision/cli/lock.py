"""`provision lock`: resolve a profile into a pinned, hashed PEP 751 lockfile, or check one.

The options are declared here; the body is provision/cli/lock_run.py, which
provision/cli/quick.py also runs without typer (issue 17)."""

from __future__ import annotations

from typing import Annotated

import typer

from provision.choices import Task
from provision.cli.options import (
    DriverOpt,
    GpuMemOpt,
    GpuOpt,
    GpusOpt,
    IgnorePipOpt,
    JsonFlag,
    LockDirOpt,
    ProfilesDir,
    TaskOpt,
    TorchIndexOpt,
    UpgradeOpt,
    VariantOpt,
)


def lock(
    profile: Annotated[
        str | None, typer.Argument(help="Profile name (or a path to a .toml file).")
    ] = None,
    task: TaskOpt = Task.infer,
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
    from provision.cli.lock_run import run

    run(
        profile,
        task.value,
        python,
        gpu,
        gpu_mem,
        gpus,
        driver,
        torch_index,
        variant,
        output,
        lock_dir,
        ignore_pip_config,
        upgrade,
        explain,
        check,
        all_profiles,
        profiles_dir,
        json_output,
    )


def register(app: typer.Typer) -> None:
    app.command(
        "lock",
        help="Pin torch (CUDA-matched) and everything else into a lockfile.",
    )(lock)
