"""The `provision` command: global options and the list of commands.

Every command module exposes `register(app)`. Modules here are imported at start-up, so they stay
light: torch, transformers, modelscope, docker and huggingface_hub are imported inside the
functions that need them, never at module level.
"""

from __future__ import annotations

from typing import Annotated

import typer

from provision import __version__
from provision.cli import (
    check,
    cluster,
    direction,
    docker,
    download,
    env,
    gpus,
    lock,
    patch,
    profiles,
    setup,
    smoke,
)
from provision.cli.output import use_json

# One example per command, shown under `provision --help` (the single place they are listed).
EXAMPLES = [
    ("check", "provision check qwen2.5-vl-7b --gpu 'RTX 4090' --task lora"),
    ("profiles", "provision profiles show gemma-3-12b-it"),
    ("gpus", "provision gpus"),
    ("download", "provision download qwen2-vl-2b --source auto"),
    ("verify", "provision verify qwen2-vl-2b"),
    ("env", 'eval "$(provision env qwen2-vl-2b)"'),
    ("patch", "provision patch apply group-beam-search-dtype --env ENV --lock LOCK"),
    ("lock", "provision lock qwen2.5-vl-7b --gpu 'RTX 4090' --driver 550.54.14 --explain"),
    ("docker", "provision docker qwen2-vl-2b --build --tag registry.example.com/vlm:1 --push"),
    ("smoke", "provision smoke qwen2-vl-2b --env /root/autodl-tmp/envs/qwen2-vl-2b"),
    ("setup", "provision setup qwen2-vl-2b --source hf-mirror"),
    ("direction", "provision direction setup okvqa-vllm-swift --source hf-mirror"),
    ("cluster", "provision cluster slurm qwen2-vl-2b --nodes 2 --shared-dir /shared/p --submit"),
]

# One line per command under `provision --help`, short enough for an 80-column terminal (click
# cuts longer ones with "..."); each command's own --help has its full description.
SUMMARIES = {
    "check": "Does a model fit this machine or a planned one?",
    "profiles": "List model profiles, or show one.",
    "gpus": "List the GPU catalogue used by --gpu.",
    "download": "Download a profile's weights, resumable and sha256-checked.",
    "verify": "Re-hash the downloaded weights against the lockfile.",
    "env": "Print HF_HOME, HF_ENDPOINT and the rest as shell code.",
    "patch": "Known library fixes: status, apply, revert.",
    "lock": "Pin a CUDA-matched torch and the rest into a lockfile.",
    "docker": "Render a profile's Dockerfile from its lock; --build builds it.",
    "smoke": "Ask the model about a bundled photo; show and record the answer.",
    "setup": "Make the machine ready: check, lock, env, weights, fixes, smoke.",
    "direction": "Several profiles sharing one environment, lock and cache.",
    "cluster": "Provision every node of a Slurm job from the same lock.",
}

app = typer.Typer(
    name="provision",
    help="Make a GPU machine ready to run or fine-tune a multimodal LLM, reproducibly.",
    # "\b" keeps click from re-wrapping the block: one example per line.
    epilog="\b\nExamples:\n" + "\n".join(f"  {cmd:9} {ex}" for cmd, ex in EXAMPLES),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # Wide enough that each example in the epilog stays on one line (click wraps at 80).
    context_settings={"max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"provision {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print results as JSON (any command that reports).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    use_json(json_output)


for module in (
    check,
    profiles,
    gpus,
    download,
    env,
    patch,
    lock,
    docker,
    smoke,
    setup,
    direction,
    cluster,
):
    module.register(app)

# Each command's own --help ends with its example too.
for info in [*app.registered_commands, *app.registered_groups]:
    example = dict(EXAMPLES).get(info.name or "")
    if example and not info.epilog:
        info.epilog = f"\b\nExample:\n  {example}"
    info.short_help = SUMMARIES.get(info.name or "", info.short_help)
