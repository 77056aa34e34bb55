"""`provision cluster slurm`: the same lock, environment and weights on every node of a job.

`cluster node` and `cluster report` are what the rendered script runs on the allocation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import JsonFlag, ProfilesDir, SourceOpt
from provision.cli.output import emit, emit_result

group = typer.Typer(
    help="Provision a cluster's nodes from the same lock (Slurm).",
    no_args_is_help=True,
)

SharedDirOpt = Annotated[
    Path,
    typer.Option(
        "--shared-dir",
        help="A folder on the file system every node mounts: environment, weights cache, "
        "the job's files and reports.",
    ),
]
NodeLocalOpt = Annotated[
    str | None,
    typer.Option(
        "--node-local-dir",
        help="One environment per node on this local folder, weights staged there from the "
        "shared cache; %N is replaced by the node's name. Default: one shared environment.",
    ),
]
GpusPerNodeOpt = Annotated[
    int, typer.Option("--gpus-per-node", help="GPUs per node in the plan (and asked of Slurm).")
]
PlanGpuOpt = Annotated[
    str | None,
    typer.Option("--gpu", help="The GPU the plan expects on each node, e.g. A100-80GB."),
]
TaskOpt = Annotated[str, typer.Option(help="infer, lora, qlora or full.")]


def slurm(
    target: Annotated[str, typer.Argument(help="A profile or a research direction.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes to allocate.")] = 1,
    gpus_per_node: GpusPerNodeOpt = 1,
    gpu: PlanGpuOpt = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    time: Annotated[str | None, typer.Option("--time", help="Time limit, e.g. 2:00:00.")] = None,
    shared_dir: SharedDirOpt = Path("/shared/provision"),
    node_local_dir: NodeLocalOpt = None,
    task: TaskOpt = "infer",
    lock: Annotated[
        Path | None, typer.Option("--lock", help="The lockfile (default: the target's).")
    ] = None,
    source: SourceOpt = "auto",
    launcher: Annotated[
        str | None,
        typer.Option(help="torchrun, deepspeed or ms-swift (default: the task's stack's)."),
    ] = None,
    entry: Annotated[
        str | None, typer.Option(help="What the launcher starts, e.g. 'train.py --cfg a.yaml'.")
    ] = None,
    gres: Annotated[
        bool,
        typer.Option(
            "--gres/--no-gres",
            help="Ask Slurm for the GPUs (--gpus-per-node); --no-gres where no GRES is set up.",
        ),
    ] = True,
    submit: Annotated[bool, typer.Option("--submit", help="Submit it with sbatch.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="With --submit: follow the job to its end.")
    ] = False,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Render an sbatch script that provisions every node; --submit submits it, --wait follows."""
    from provision.cluster.render import SlurmJob, default_launcher
    from provision.cluster.submit import (
        allocated_nodes,
        collect,
        prepare,
        target_kind,
    )
    from provision.cluster.submit import submit as do_submit
    from provision.cluster.submit import wait as do_wait
    from provision.errors import ProvisionError

    if wait and not submit:
        raise ProvisionError("--wait follows a submitted job: add --submit.")
    kind, default_lock, stack = target_kind(target, task, profiles_dir)
    job = SlurmJob(
        target=target,
        kind=kind,
        lock=(lock or default_lock).expanduser().absolute(),
        shared_dir=shared_dir.expanduser(),
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        gpu=gpu,
        partition=partition,
        time=time,
        node_local_dir=Path(node_local_dir) if node_local_dir else None,
        task=task,
        source=source,
        gres=gres,
        launcher=launcher or default_launcher(stack),
        entry=entry,
        profiles_dir=profiles_dir,
    )
    if gpu:
        from provision.hardware.catalogue import lookup

        job.gpu = lookup(gpu).name  # an unknown name fails here, with the close ones
    rendered = prepare(job)
    if submit:
        job_id = do_submit(rendered)
        if wait:
            rendered.state = do_wait(job_id)
            from provision.cluster.submit import job_state  # noqa: F401 - same module

            rendered.report = collect(job.job_dir, job_id, allocated_nodes(_nodelist(job_id)))
    failure = None if rendered.report is None else _failure(rendered.report)
    emit_result(rendered, lambda con: render(con, rendered), json_output, failure, tell=True)


def _nodelist(job_id: str) -> str | None:
    """The job's nodes, from its output's record while Slurm still has it."""
    import shutil
    import subprocess

    if shutil.which("scontrol") is None:
        return None
    proc = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False
    )
    for word in proc.stdout.split():
        if word.startswith("NodeList=") and word != "NodeList=(null)":
            return word.split("=", 1)[1]
    return None


def render(con: Any, rendered: Any) -> None:
    job = rendered.job
    if rendered.job_id is None:
        con.print(rendered.text, markup=False, highlight=False, end="")
        con.print(f"# written to {rendered.script}; {rendered.lock_note}", markup=False)
    else:
        con.print(f"Submitted {rendered.script} as job {rendered.job_id}", markup=False)
    con.print(
        f"Launcher ({job.launcher_name}), run on every node of the job with "
        "`srun --ntasks-per-node=1 bash -c '...'`:",
        markup=False,
    )
    con.print(f"  {rendered.launcher}", markup=False, highlight=False)
    if rendered.report is not None:
        con.print(f"Job {rendered.job_id} ended: {rendered.state}", markup=False)
        report_table(con, rendered.report)


def report_table(con: Any, report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    for node in report.nodes:
        table = Table(title=f"node {node.get('node')} (job {report.job_id})")
        for col in ("stage", "status", "what it did", "seconds"):
            table.add_column(col)
        for stage in node.get("stages", []):
            table.add_row(
                str(stage.get("stage")),
                str(stage.get("status")),
                escape(str(stage.get("detail", ""))),
                f"{float(stage.get('seconds') or 0):.1f}",
            )
        con.print(table)
    for problem in report.problems:
        con.print(f"[red]{escape(problem)}[/]")


def node(
    target: Annotated[str, typer.Argument(help="A profile or a research direction.")],
    shared_dir: SharedDirOpt,
    kind: Annotated[str, typer.Option(help="profile or direction.")] = "profile",
    task: TaskOpt = "infer",
    node_local_dir: NodeLocalOpt = None,
    gpus_per_node: GpusPerNodeOpt = 1,
    gpu: PlanGpuOpt = None,
    source: SourceOpt = "auto",
    stale_after: Annotated[
        float, typer.Option(help="Seconds without a heartbeat before a lock counts as stale.")
    ] = 60.0,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """One node's stages (run by the job script on every node): GPUs, env, weights, fixes,
    smoke; writes the node's report."""
    from provision.cluster.node import NodeOptions, run_node

    options = NodeOptions(
        target=target,
        shared_dir=shared_dir,
        kind=kind,
        task=task,
        node_local_dir=node_local_dir,
        gpus_per_node=gpus_per_node,
        gpu=gpu,
        source=source,
        profiles_dir=profiles_dir,
        stale_after=stale_after,
    )
    data = run_node(options)

    def show(con: Any) -> None:
        for stage in data["stages"]:
            con.print(
                f"[{data['node']}] {stage['stage']}: {stage['status']} {stage['detail']}",
                markup=False,
            )

    emit(data, show, json_output)


def report(
    job_dir: Annotated[Path, typer.Option("--job-dir", help="The job's folder (shared dir).")],
    job: Annotated[str, typer.Option("--job", help="The Slurm job id.")],
    json_output: JsonFlag = False,
) -> None:
    """The nodes' reports of one job; exit 1 naming the node and stage that failed."""
    import os

    from provision.cluster.submit import allocated_nodes, collect

    expected = allocated_nodes(os.environ.get("SLURM_JOB_NODELIST"))
    result = collect(job_dir, job, expected)
    emit_result(result, lambda con: report_table(con, result), json_output, _failure(result), True)


def _failure(report: Any) -> Any:
    """The job's failure (no node reported, or a node's stage failed), or None."""
    from provision.cluster.submit import require_ok
    from provision.errors import CheckFailed

    try:
        require_ok(report)
    except CheckFailed as exc:
        return exc
    return None


group.command("slurm")(slurm)
group.command("node")(node)
group.command("report")(report)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="cluster")
