"""What several commands share beyond their options: the planning target built from the target
options, and the printing of lock checks, lock runs and setup stages. Command modules import from
here (and options.py, output.py), never from each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from provision.cli.output import emit_error, emit_result

if TYPE_CHECKING:
    from provision.errors import ProvisionError
    from provision.setup import StageReport


def planned_machine(gpu: str | None, gpu_mem: str | None, gpus: int | None, driver: str | None):  # noqa: ANN201
    from provision.hardware.catalogue import target_machine

    return target_machine(gpu=gpu, gpu_mem=gpu_mem, gpus=gpus, driver=driver)


def lock_machine(gpu: str | None, gpu_mem: str | None, gpus: int | None, driver: str | None) -> Any:
    """The machine a lock is planned for (None: this one). Shared with `direction lock`."""
    if gpu is None and gpu_mem is None and gpus is None and driver is None:
        return None  # this machine: the GPU catalogue is not read (issue 17, a lock's start-up)
    if driver and gpu is None and gpu_mem is None:
        # A driver alone is enough to choose a build: plan for it without sizing any GPU.
        from provision.hardware.machine import Machine, cuda_for_driver

        return Machine([], driver, cuda_for_driver(driver), source="target", planned=True)
    return planned_machine(gpu, gpu_mem, gpus, driver)


def emit_checks(
    results: Sequence[Any], json_output: bool, label: Callable[[Any], str], what: str, hint: str
) -> None:
    """Print `--check` results (fresh or stale, and why); exit 1 when any is stale.
    `label(item)` names what each lock is for; `what` says what was checked, `hint` the fix."""
    from provision.errors import CheckFailed

    def render(con: Any) -> None:
        from rich.markup import escape

        for item in results:
            mark = "[green]fresh[/]" if item.fresh else "[red]stale[/]"
            con.print(f"{mark} {escape(str(item.path))} ({label(item)})")
            for reason in item.reasons:
                con.print(f"    {escape(reason)}")

    stale = [r for r in results if not r.fresh]
    error = CheckFailed(f"{len(stale)} of {len(results)} {what} stale.", hint) if stale else None
    emit_result(results, render, json_output, error, tell=True)


def emit_locked(
    items: Sequence[Any], json_output: bool, label: Callable[[Any], str], what: str
) -> None:
    """Print `--all` lock results (locked or failed, and the summary); exit 1 when any failed."""
    from provision.errors import CheckFailed

    def render(con: Any) -> None:
        from rich.markup import escape

        for item in items:
            mark = "[green]locked[/]" if item.ok else "[red]failed[/]"
            con.print(f"{mark} {label(item)}: {escape(item.message)}")

    failed = [i for i in items if not i.ok]
    error = CheckFailed(f"{len(failed)} of {len(items)} {what} failed (listed above).")
    emit_result(items, render, json_output, error if failed else None, tell=True)


def progress_printer(quiet: bool) -> Callable[[StageReport], None]:
    """Setup's progress callback: one line a stage as it ends (nothing under --json)."""

    def progress(report: StageReport) -> None:
        if quiet:
            return
        from provision.cli.output import console

        mark = {"done": "ok", "skipped": "--", "failed": "!!", "not run": "  "}[report.status]
        console().print(f"[{mark}] {report.name}: {report.detail}", markup=False)

    return progress


def show_partial(exc: ProvisionError, render_result: Callable[[Any], None], quiet: bool) -> None:
    """A setup that failed part-way: people get the table of how far it got (the error follows);
    under --json the envelope carries it as the result, with ok false and the error."""
    partial = getattr(exc, "setup_result", None)
    if quiet:
        emit_error(exc, partial)
        raise SystemExit(exc.exit_code)
    if partial is not None:
        render_result(partial)


def stage_table(con: Any, title: str, stages: Any) -> None:
    """The stages as a table: what each did and how long it took."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in ("stage", "status", "what it did", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for stage in stages:
        # escaped: a detail such as "torch 2.13.0 [cpu]" is text, not rich markup
        table.add_row(stage.name, stage.status, escape(stage.detail), f"{stage.seconds:.1f}")
    con.print(table)


@dataclass(frozen=True)
class LockFlags:
    """The lock options `lock`, `direction lock`, `direction add` and `direction remove` share:
    the planning target, where torch comes from, and where locks live. One object, turned into
    the keyword arguments the locking functions take."""

    python: str | None = None
    gpu: str | None = None
    gpu_mem: str | None = None
    gpus: int | None = None
    driver: str | None = None
    torch_index: str | None = None
    variant: str | None = None
    lock_dir: str | None = None
    ignore_pip_config: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {
            "machine": lock_machine(self.gpu, self.gpu_mem, self.gpus, self.driver),
            "python": self.python,
            "torch_index": self.torch_index,
            "variant": self.variant,
            "lock_dir": self.lock_dir,
            "use_pip_config": not self.ignore_pip_config,
        }


def apply_offline(offline: bool) -> None:
    """--offline reaches the derivation through PROVISION_OFFLINE (what the library reads)."""
    if offline:
        import os

        os.environ["PROVISION_OFFLINE"] = "1"
