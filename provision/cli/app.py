"""The `provision` command: global options and the list of commands.

Every command module exposes `register(app)`. Only the invoked command's module is imported and
only its commands are built (`LazyGroup`): `provision check` does not pay for the other eleven,
and `provision --help` lists them from `SUMMARIES` without importing any. Command modules stay
light all the same: torch, transformers, modelscope, docker and huggingface_hub are imported
inside the functions that need them, never at module level; rich only when something is printed.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from provision import __version__
from provision.cli.output import note_command, short_run, use_json

# Command name -> the module under provision.cli whose register(app) defines it, in the order
# `provision --help` lists them.
COMMANDS = {
    "check": "check",
    "profiles": "profiles",
    "gpus": "gpus",
    "download": "download",
    "verify": "download",
    "env": "env",
    "patch": "patch",
    "lock": "lock",
    "docker": "docker",
    "smoke": "smoke",
    "setup": "setup",
    "serve": "serve",
    "direction": "direction",
    "cluster": "cluster",
}

# Commands that run to their end with Python's cyclic garbage collector off (cli/main.py turns it
# off for the start-up): short runs whose allocations are bounded. Every other command turns it
# back on as soon as it is known, so long runs (downloads, setups, servers) collect as usual.
COLLECTOR_OFF = frozenset({"check", "lock", "profiles", "gpus", "env"})
# Whether the collector was on when main() started (the in-process tests run main() too).
collect_after_start = True

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
    ("serve", "provision serve qwen2-vl-2b --stack vllm --port 8000"),
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
    "serve": "Start the model's OpenAI server with the limits the check chose.",
    "direction": "Several profiles sharing one environment, lock and cache.",
    "cluster": "Provision every node of a Slurm job from the same lock.",
}


def build_commands(module_name: str) -> dict[str, Any]:
    """The click commands one command module defines (name -> command), built through typer
    exactly as a full app would build them, each with its example and one-line summary."""
    module = importlib.import_module(f"provision.cli.{module_name}")
    part = typer.Typer(rich_markup_mode=None, add_completion=False)
    module.register(part)
    for info in [*part.registered_commands, *part.registered_groups]:
        example = dict(EXAMPLES).get(info.name or "")
        if example and not info.epilog:
            info.epilog = f"\b\nExample:\n  {example}"
        info.short_help = SUMMARIES.get(info.name or "", info.short_help)
    return dict(typer.main.get_group(part).commands)


class LazyGroup(TyperGroup):
    """The top-level group: a command is built when it is asked for, not at start-up."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            for name, command in build_commands(COMMANDS[cmd_name]).items():
                self.commands.setdefault(name, command)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in COMMANDS:
            note_command(args[0])  # the --json envelope's command, until its own flag says more
        short_run(bool(args) and args[0] in COLLECTOR_OFF)
        if collect_after_start and not (args and args[0] in COLLECTOR_OFF):
            import gc

            gc.enable()
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:  # click's UsageError: suggest from all names, built or not
            message = getattr(exc, "message", None)
            from difflib import get_close_matches  # only for a mistyped command

            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if isinstance(message, str) and matches and "Did you mean" not in message:
                names = ", ".join(f"{m!r}" for m in matches)
                exc.message = f"{message.rstrip('.')}. Did you mean {names}?"  # type: ignore[attr-defined]
            raise

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        self.asked_json = "--json" in args  # before or after the command
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # click's usage errors (a bad choice, an unknown option): under --json, scripts get
            # the envelope with ok false rather than click's usage text.
            exit_code = getattr(exc, "exit_code", None)
            if not hasattr(exc, "format_message") or not (use_json() or self.asked_json):
                raise
            from provision.cli.output import command_path, emit_error
            from provision.errors import ProvisionError

            if getattr(exc, "ctx", None) is not None and exc.ctx.parent is not None:
                note_command(command_path(exc.ctx))  # the (sub)command that was misused
            error = ProvisionError(exc.format_message(), "--help lists the options.")
            error.code, error.exit_code = "usage", exit_code if exit_code is not None else 2
            emit_error(error)
            raise typer.Exit(error.exit_code) from None

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # The one-line summaries are data here: listing them imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in COMMANDS])


app = typer.Typer(
    name="provision",
    cls=LazyGroup,
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
        bool, typer.Option("--json", help="Print results as JSON: one envelope (docs/json.md).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    use_json(json_output)
