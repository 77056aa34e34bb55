"""Options that several commands take, declared once so their names and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provision.choices import Attention, Quant, Stack, Task

# What a run is: check, lock, setup, docker, direction add. Fixed choices are enums, so a typo
# fails with the list (exit 2).
TaskOpt = Annotated[Task, typer.Option("--task", help="What the model is for.")]
TasksOpt = Annotated[
    list[Task] | None, typer.Option("--task", help="What the model is for (repeat for several).")
]
QuantOpt = Annotated[
    Quant | None, typer.Option("--quant", help="Weight precision (default bf16; qlora int4).")
]
StackOpt = Annotated[
    Stack | None,
    typer.Option("--stack", help="The framework that runs it (default: the profile's)."),
]
AttentionOpt = Annotated[Attention, typer.Option("--attention", help="Attention kernel.")]

# Where profiles come from: every command that names a profile.
ProfilesDir = Annotated[
    str | None,
    typer.Option(
        "--profiles-dir",
        envvar="PROVISION_PROFILES_DIR",
        help="Folder of your own profile TOML files (searched before the built-ins).",
    ),
]

# A planning target: check, lock, direction check/lock/add/remove.
GpuOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu",
        help="Plan for a GPU you do not have: 'RTX 4090', 'A100-80GB x2' (see `provision gpus`).",
    ),
]
GpuMemOpt = Annotated[
    str | None, typer.Option("--gpu-mem", help="Plan for a GPU with this memory, e.g. 24GiB.")
]
GpusOpt = Annotated[int | None, typer.Option("--gpus", help="Number of GPUs in the plan.")]
DriverOpt = Annotated[
    str | None,
    typer.Option("--driver", help="NVIDIA driver version of the planned machine, e.g. 550.54.14."),
]

# How a lock is resolved: lock, direction lock/setup/add/remove.
TorchIndexOpt = Annotated[
    str | None,
    typer.Option(
        "--torch-index",
        help="Where torch comes from: official, a mirror name (nju, aliyun), pypi, a URL, a "
        "template with {variant}, or a folder of wheels.",
    ),
]
VariantOpt = Annotated[
    str | None,
    typer.Option("--variant", help="Force a build: cu124, cpu, or pypi (PyPI's build)."),
]
LockDirOpt = Annotated[
    str | None,
    typer.Option("--lock-dir", envvar="PROVISION_LOCK_DIR", help="Folder of lockfiles."),
]
IgnorePipOpt = Annotated[
    bool,
    typer.Option(
        "--ignore-pip-config", help="Resolve against PyPI only, ignoring pip.conf / PIP_*."
    ),
]
UpgradeOpt = Annotated[
    bool,
    typer.Option(
        "--upgrade", help="Resolve afresh instead of keeping the existing lock's versions."
    ),
]

# Where weights come from and how an environment is made: download, env, setup, direction setup.
SourceOpt = Annotated[
    str,
    typer.Option(
        "--source",
        help="auto (probe and pick), hf, hf-mirror, modelscope, an HF-compatible URL, "
        "modelscope:URL, or a folder.",
    ),
]
WheelhouseOpt = Annotated[
    Path | None,
    typer.Option(
        "--wheelhouse", help="Folder of wheels to install from (also read from PIP_FIND_LINKS)."
    ),
]
ForceOpt = Annotated[
    list[str] | None,
    typer.Option("--force", help="Redo a stage even if done: check, lock, env, weights..."),
]
SkipCheckOpt = Annotated[
    bool, typer.Option("--skip-check", help="Go on even if the model does not fit here.")
]
SetupLockOpt = Annotated[
    Path | None, typer.Option("--lock", help="Lockfile to write and record into.")
]


OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        envvar="PROVISION_OFFLINE",
        help="For a repo id: use the metadata cache only, never the network.",
    ),
]
