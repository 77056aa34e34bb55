"""`provision smoke PROFILE`: one real inference in the target environment, recorded in the lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import JsonFlag, ProfilesDir, ServedOpt
from provision.cli.output import emit_result, use_json
from provision.errors import CheckFailed, ProvisionError


def _interpreter(profile: str, env: Path | None, python: Path | None) -> tuple[Path, str]:
    """The target Python and how to name it in next-step commands."""
    from provision.envs import env_python, python_for
    from provision.setup import default_env

    if env is None and python is None:
        default = default_env(profile)
        if not (default / "pyvenv.cfg").is_file():
            raise ProvisionError(
                f"No environment for {profile} at {default}.",
                f"Run `provision setup {profile}` first, or pass --env PATH / --python PATH.",
            )
        return env_python(default), f"--env {default}"
    interpreter = python_for(env, python)
    return interpreter, (f"--env {env}" if env is not None else f"--python {interpreter}")


def _fmt_bytes(n: int | None) -> str:
    from provision.units import fmt_bytes

    return "-" if n is None else fmt_bytes(n)


def _render(result: Any) -> Any:
    def render(con: Any) -> None:
        from rich.table import Table

        head = "[green]ok[/]" if result.ok else "[red]FAILED[/]"
        con.print(f"[bold]smoke {result.profile}[/]: {head}  {result.summary}", highlight=False)
        con.print(
            f"{result.repo_id} @ {result.revision or 'main'} ({result.location})", markup=False
        )
        if result.backend:
            con.print(
                f"backend {result.backend} on {result.device_name}: {result.backend_reason}",
                markup=False,
            )
        if result.model_class:
            con.print(f"model {result.model_class}, {result.dtype}", markup=False)
        if result.answer is not None:
            con.print(f"Q: {result.prompt}", markup=False)
            con.print(f"A: {result.answer}", markup=False)
        numbers = []
        if result.load_seconds is not None:
            numbers.append(f"load {result.load_seconds:.1f} s")
        if result.latency_s is not None:
            numbers.append(f"latency {result.latency_s:.2f} s")
        if result.tokens_per_s is not None:
            numbers.append(f"{result.tokens_per_s:.1f} tokens/s")
        if result.peak_memory_bytes is not None:
            numbers.append(
                f"peak memory {_fmt_bytes(result.peak_memory_bytes)} ({result.peak_memory_kind})"
            )
        if numbers:
            con.print(", ".join(numbers), markup=False)
        if result.modes:
            table = Table(title="decoding modes")
            for col in ("mode", "status", "tokens/s", "detail"):
                table.add_column(col, overflow="fold")
            for name, mode in result.modes.items():
                if mode.status == "ok":
                    detail = repr(mode.answer)
                elif mode.status == "not_applicable":
                    detail = mode.reason or ""
                else:
                    err = mode.error or {}
                    detail = f"{err.get('type')}: {err.get('message')}"
                    if mode.fix:
                        detail += f"\nneeds fix {mode.fix}"
                rate = "-" if mode.tokens_per_s is None else f"{mode.tokens_per_s:.1f}"
                table.add_row(name, mode.status, rate, detail)
            con.print(table)
        _print_error(con, result.error)
        if result.next_step:
            con.print(f"next: {result.next_step}", markup=False)
        _print_recorded(con, result)

    return render


def _print_error(con: Any, err: dict[str, Any] | None) -> None:
    """The runner's error: its words are the environment's text, never markup."""
    if err:
        from rich.markup import escape

        said = escape(f"{err.get('type')}: {err.get('message')}")
        con.print(f"[red]error at {escape(str(err.get('stage')))}[/]: {said}", highlight=False)


def _print_recorded(con: Any, result: Any) -> None:
    """Where the result was recorded, or why it was not (both smokes)."""
    if result.not_recorded:
        con.print(result.not_recorded, markup=False)
    elif result.lock_file:
        con.print(f"recorded for {result.lock_file}", markup=False)


def _render_dataset(result: Any) -> Any:
    def render(con: Any) -> None:
        from rich.table import Table

        head = "[green]ok[/]" if result.ok else "[red]FAILED[/]"
        accuracy = "-" if result.accuracy is None else f"{result.accuracy:.1%}"
        con.print(
            f"[bold]smoke {result.profile} on {result.dataset}[/]: {head}  "
            f"{result.correct}/{result.scored} exact match ({accuracy})",
            highlight=False,
        )
        con.print(
            f"{result.repo_id} @ {result.commit or '?'}, {len(result.items)} of {result.n} items "
            f"asked, backend {result.backend} "
            + ("served (OpenAI endpoint)" if result.via == "served" else f"on {result.device}"),
            markup=False,
        )
        from rich.markup import escape

        table = Table()
        for col in ("#", "question", "answer", "references", "match"):
            table.add_column(col, overflow="fold")
        for item in result.items:  # dataset text is data, never markup
            answer = item.prediction if item.error is None else f"error: {item.error}"
            table.add_row(
                str(item.index),
                escape(item.question),
                escape(answer or ""),
                escape(", ".join(dict.fromkeys(item.answers))),
                "yes" if item.match else "no",
            )
        con.print(table)
        _print_error(con, result.error)
        _print_recorded(con, result)

    return render


def smoke(
    profile: Annotated[str, typer.Argument(help="Profile name, e.g. qwen2-vl-2b.")],
    env: Annotated[
        Path | None,
        typer.Option("--env", help="The environment to test (default: <data dir>/envs/PROFILE)."),
    ] = None,
    python: Annotated[
        Path | None, typer.Option("--python", help="Its interpreter instead of --env.")
    ] = None,
    lock: Annotated[
        Path | None,
        typer.Option(
            "--lock", help="Lockfile to record into (default: the profile's, if it exists)."
        ),
    ] = None,
    hf_home: Annotated[
        Path | None,
        typer.Option(
            "--hf-home", help="HF_HOME the weights are in (default: as set, or data dir)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (a GPU if torch sees one), cpu, cuda or cuda:N.")
    ] = "auto",
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="transformers, lmdeploy or vllm (default: the profile's infer stack; serving "
            "stacks only on a GPU).",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before the smoke is stopped.")
    ] = 1800.0,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Run N items of this downloaded dataset (okvqa, or org/name) instead of the "
            "bundled photo, and report exact-match accuracy (docs/datasets.md).",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="How many dataset items (with --dataset).")] = 20,
    served: ServedOpt = False,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Ask the model about a bundled photo (or N dataset items) in its environment; show and
    record the result."""
    from provision.lock.lockfile import find_lock
    from provision.profiles import load_profile
    from provision.smoke.run import run_smoke

    if backend is not None and backend not in ("transformers", "lmdeploy", "vllm"):
        raise ProvisionError(
            f"Unknown backend {backend!r}.", "Use transformers, lmdeploy or vllm (or leave it out)."
        )
    if served and dataset is None:
        raise ProvisionError(
            "--served runs a dataset's items through the served model; it needs --dataset.",
            "Add --dataset NAME (and --n N), or drop --served.",
        )
    loaded = load_profile(profile, profiles_dir)
    interpreter, target = _interpreter(loaded.name, env, python)
    into_lock = lock is not None  # --lock FILE: record into FILE; else this machine's record
    if lock is None:
        default_lock = find_lock(loaded.name)
        lock = default_lock if default_lock.exists() else None
    if hf_home is None and not (os.environ.get("HF_HOME") or os.environ.get("HF_HUB_CACHE")):
        from provision.settings import hub_environment

        hf_home = Path(hub_environment(None, "hf")["HF_HOME"])
    if dataset is not None:
        from provision.smoke.dataset import run_dataset_smoke

        found = run_dataset_smoke(
            loaded,
            interpreter,
            dataset,
            n,
            hf_home,
            lock_file=lock,
            device=device,
            timeout=timeout,
            backend=backend,
            into_lock=into_lock,
            served=served,
            profiles_dir=profiles_dir,
        )
        failure = None if found.ok else CheckFailed(f"The dataset smoke of {loaded.name} failed.")
        emit_result(found, _render_dataset(found), use_json(json_output), failure)
        return
    result = run_smoke(
        loaded,
        interpreter,
        hf_home,
        lock_file=lock,
        device=device,
        timeout=timeout,
        backend=backend,
        target=target,
        into_lock=into_lock,
    )
    failure = None if result.ok else CheckFailed(f"The smoke test of {loaded.name} failed.")
    emit_result(result, _render(result), use_json(json_output), failure)


def register(app: typer.Typer) -> None:
    app.command("smoke")(smoke)
