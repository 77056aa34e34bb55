"""Options that several commands take, declared once so their names and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provision.choices import Attention, Quant, Stack, Task, TrainVision
from provision.cli.output import command_path, record_command


def _record_command(ctx: typer.Context, value: bool) -> bool:
    record_command(command_path(ctx), value)
    return value


# `--json` works before the command (global) and after it (each reporting command's own flag).
JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the result as JSON (one envelope: see docs/json.md).",
        callback=_record_command,
        is_eager=True,
    ),
]

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

# How a dataset smoke reaches the model: smoke (and any later stage that runs items).
ServedOpt = Annotated[
    bool,
    typer.Option(
        "--served",
        help="With --dataset: send the items to the model served by `provision serve` (OpenAI "
        "chat requests, the image as a data: URI; --backend names the stack) instead of "
        "loading it in-process.",
    ),
]

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

# The run to size: check and direction check (issue 12). Engine flags are named as the engines
# name them (vLLM 0.8.5, LMDeploy 0.7.3: provision/data/stacks.toml [stack.*.launch]).
MemberTaskOpt = Annotated[
    Task | None,
    typer.Option("--task", help="infer, lora, qlora or full (default: each member's tasks)."),
]
BatchOpt = Annotated[int, typer.Option("--batch", help="Samples per GPU per step.")]
SeqOpt = Annotated[
    int | None,
    typer.Option("--seq", help="Tokens per sample, image tokens included (default by task)."),
]
LoraRankOpt = Annotated[
    int | None, typer.Option("--lora-rank", help="LoRA rank (default 8, as ms-swift and PEFT).")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype", help="Dtype of the loaded weights: fp32, fp16 or bf16 (fp32 doubles them)."
    ),
]
MaxNumSeqsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-num-seqs",
        help="vLLM --max-num-seqs: requests at once, and dummy requests in its start-up profile "
        "run (default 256).",
    ),
]
EnforceEagerOpt = Annotated[
    bool,
    typer.Option("--enforce-eager", help="vLLM --enforce-eager: no CUDA graphs (saves ~1 GiB)."),
]
MaxBatchedTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-batched-tokens",
        help="vLLM --max-num-batched-tokens: tokens per step and in the profile run.",
    ),
]
LimitMmOpt = Annotated[
    str | None,
    typer.Option(
        "--limit-mm",
        help="vLLM --limit-mm-per-prompt: image=N[,video=M] (default image=1).",
    ),
]
CacheMaxEntryOpt = Annotated[
    float | None,
    typer.Option(
        "--cache-max-entry-count",
        help="LMDeploy: share of the memory free after the weights given to the KV cache (0.8).",
    ),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pixels", help="Qwen-VL family: pixels per image, e.g. 1003520 (1280*28*28)."
    ),
]
MaxTilesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tiles", help="Tiled models (InternVL max_dynamic_patch, SmolVLM, Mllama): tiles."
    ),
]
# Training set-ups (issue 12 item 3).
TrainVisionOpt = Annotated[
    TrainVision,
    typer.Option(
        "--train-vision",
        help="The vision tower under training: frozen (default), lora (adapters on its linears) "
        "or full.",
    ),
]
VisionCheckpointingOpt = Annotated[
    bool | None,
    typer.Option(
        "--vision-checkpointing/--no-vision-checkpointing",
        help="Gradient checkpointing in a trained vision tower (default: as the language model's).",
    ),
]
CpuOffloadOpt = Annotated[
    bool,
    typer.Option(
        "--cpu-offload",
        help="DeepSpeed ZeRO offload: optimizer state in RAM (ZeRO-3: the parameters too).",
    ),
]
FramesOpt = Annotated[int | None, typer.Option("--frames", help="Video frames per sample.")]
EmitOpt = Annotated[
    bool,
    typer.Option(
        "--emit", help="Print the stack's own launch command with the numbers that make it fit."
    ),
]
LaunchDatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="With --emit, training: the dataset the launch line trains on, as the stack names "
        "it (LLaMA-Factory: a data/dataset_info.json entry; ms-swift: a hub id or a .jsonl; "
        "XTuner: a LLaVA-format .json). Default: the stack's own demo dataset.",
    ),
]


def parse_limit_mm(value: str | None) -> tuple[int | None, int | None]:
    """'image=N[,video=M]' -> (N, M); a clear error naming the flag otherwise."""
    from provision.errors import ProvisionError

    if value is None:
        return None, None
    found: dict[str, int] = {}
    for part in value.split(","):
        key, sep, number = part.strip().partition("=")
        if not sep or key not in ("image", "video") or not number.isdigit() or key in found:
            raise ProvisionError(
                f"--limit-mm '{value}' is not image=N[,video=M].", "Example: --limit-mm image=2"
            )
        found[key] = int(number)
    return found.get("image"), found.get("video")
