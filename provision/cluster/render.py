"""The sbatch script for `provision cluster slurm`, and the training launcher line.

The script does three things on the allocation: run `provision cluster node` once per node (the
stages: GPUs against the plan, environment, weights, fixes, smoke; one report per node), print
the nodes' reports with `provision cluster report` (which fails naming the node and the stage),
and print the launcher line built from the job's SLURM_* variables.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.resources import load_table

ENV_MODES = ("shared", "local")
# Slurm's own --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (sbatch(1)).
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^(UNLIMITED|INFINITE)$", re.IGNORECASE)
_PARTITION = re.compile(r"^[A-Za-z0-9_.,-]+$")
NODE_PLACEHOLDER = "%N"  # in --node-local-dir: the node's Slurm name (one host, several nodes)


@dataclass
class SlurmJob:
    """What `provision cluster slurm` renders: the target, the allocation and the layout."""

    target: str  # a profile or a direction
    kind: str  # "profile" or "direction"
    lock: Path
    shared_dir: Path
    nodes: int = 1
    gpus_per_node: int = 1
    gpu: str | None = None  # catalogue name the plan declares, e.g. A100-80GB
    partition: str | None = None
    time: str | None = None
    node_local_dir: Path | None = None  # None: one environment on the shared file system
    task: str = "infer"
    source: str = "auto"
    gres: bool = True  # ask Slurm for the GPUs (--gpus-per-node); off where no GRES is set up
    launcher: str | None = None  # default: the task's stack's
    entry: str | None = None
    profiles_dir: str | None = None
    python: str = field(default_factory=lambda: sys.executable)
    lease_stale_after: float = 60.0

    @property
    def env_mode(self) -> str:
        return "shared" if self.node_local_dir is None else "local"

    @property
    def job_dir(self) -> Path:
        """The job's folder on the shared file system: script, its lock copy, reports, logs."""
        return self.shared_dir / "cluster" / safe_name(self.target)

    @property
    def job_lock(self) -> Path:
        return self.job_dir / "pylock.toml"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "lock": str(self.lock),
            "job_lock": str(self.job_lock),
            "shared_dir": str(self.shared_dir),
            "node_local_dir": None if self.node_local_dir is None else str(self.node_local_dir),
            "env_mode": self.env_mode,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpu": self.gpu,
            "partition": self.partition,
            "time": self.time,
            "task": self.task,
            "gres": self.gres,
            "launcher": self.launcher_name,
        }

    @property
    def launcher_name(self) -> str:
        return self.launcher or "torchrun"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem if name.endswith(".toml") else name)


def validate(job: SlurmJob) -> None:
    """Bad input becomes one message naming the option and the fix (exit 2)."""
    if job.nodes < 1:
        raise ProvisionError(f"--nodes {job.nodes}: must be at least 1.")
    if job.gpus_per_node < 0:
        raise ProvisionError(f"--gpus-per-node {job.gpus_per_node}: must be 0 or more.")
    if job.time is not None and not _TIME.match(job.time):
        raise ProvisionError(
            f"--time {job.time!r} is not a Slurm time.",
            "Use minutes, H:M:S or D-H:M:S, e.g. --time 2:00:00.",
        )
    if job.partition is not None and not _PARTITION.match(job.partition):
        raise ProvisionError(f"--partition {job.partition!r}: letters, digits, '_.,-' only.")
    for label, path in (("--shared-dir", job.shared_dir), ("--node-local-dir", job.node_local_dir)):
        if path is not None and not Path(path).is_absolute():
            raise ProvisionError(
                f"{label} {path}: must be an absolute path (every node resolves it the same way)."
            )
    if job.launcher is not None and job.launcher not in launchers():
        raise ProvisionError(
            f"--launcher {job.launcher}: unknown.", f"Known: {', '.join(sorted(launchers()))}."
        )
    if not job.lock.is_file():
        raise ProvisionError(
            f"No lockfile at {job.lock}: the nodes build their environment from the lock.",
            f"Run `provision lock {job.target}` first (or pass --lock).",
        )


# --- the launcher line ---------------------------------------------------------------------------


def launchers() -> dict[str, dict[str, Any]]:
    return load_table("launchers.toml")["launcher"]


def default_launcher(stack: str | None) -> str:
    return load_table("launchers.toml").get("stack_launcher", {}).get(stack or "", "torchrun")


def launcher_line(name: str, gpus_per_node: int, entry: str | None = None) -> str:
    """One node's launch command; each node's shell expands the SLURM_* variables in it."""
    spec = launchers()[name]
    return spec["line"].format(gpus_per_node=max(gpus_per_node, 1), entry=entry or spec["entry"])


def launcher_block(name: str, gpus_per_node: int, entry: str | None = None) -> list[str]:
    """The shell lines that set MASTER_ADDR/PORT (and the hostfile) and start the launcher on
    every node, from inside the batch script."""
    spec = launchers()[name]
    line = launcher_line(name, gpus_per_node, entry)
    out = [
        "# The first node of the allocation is the rendezvous; the port is derived from the job id",
        "# so two jobs on the same nodes do not collide.",
        'MASTER_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'MASTER_ADDR=$(scontrol show node "$MASTER_NODE" 2>/dev/null '
        "| sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
        'export MASTER_ADDR="${MASTER_ADDR:-$MASTER_NODE}"',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
    ]
    if spec.get("hostfile"):
        out += [
            'export HOSTFILE="$JOB_DIR/hostfile-$SLURM_JOB_ID"',
            'scontrol show hostnames "$SLURM_JOB_NODELIST" '
            f'| sed "s/$/ slots={max(gpus_per_node, 1)}/" > "$HOSTFILE"',
        ]
    out.append(f"LAUNCH={shlex.quote(line)}")
    return out


# --- the script ----------------------------------------------------------------------------------


def node_command(job: SlurmJob) -> list[str]:
    """`provision cluster node ...` as each node runs it."""
    argv = [
        job.python,
        "-m",
        "provision",
        "cluster",
        "node",
        job.target,
        "--kind",
        job.kind,
        "--task",
        job.task,
        "--shared-dir",
        str(job.shared_dir),
        "--gpus-per-node",
        str(job.gpus_per_node),
        "--source",
        job.source,
        "--stale-after",
        f"{job.lease_stale_after:g}",
    ]
    if job.node_local_dir is not None:
        argv += ["--node-local-dir", str(job.node_local_dir)]
    if job.gpu:
        argv += ["--gpu", job.gpu]
    if job.profiles_dir:
        argv += ["--profiles-dir", str(job.profiles_dir)]
    return argv


def render_script(job: SlurmJob) -> str:
    """The sbatch script, as text (the caller writes it)."""
    from provision import __version__

    q = shlex.quote
    header = [
        "#!/bin/bash",
        f"# Rendered by `provision cluster slurm {job.target}` (provision {__version__}).",
        "# Re-render rather than edit: the options below came from the command line.",
        f"#SBATCH --job-name=provision-{safe_name(job.target)}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if job.gres and job.gpus_per_node > 0:
        header.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.partition:
        header.append(f"#SBATCH --partition={job.partition}")
    if job.time:
        header.append(f"#SBATCH --time={job.time}")
    header.append(f"#SBATCH --output={job.job_dir}/slurm-%j.out")
    plan = f"{job.gpus_per_node} x {job.gpu}" if job.gpu else f"{job.gpus_per_node} GPU(s)"
    body = [
        "set -uo pipefail",
        "",
        f"# Plan: {job.nodes} node(s), {plan} each; environment: {job.env_mode}"
        + (
            " (one on the shared file system, built once under a lock)"
            if job.env_mode == "shared"
            else f" (one per node under {job.node_local_dir}; weights staged from the shared cache)"
        ),
        f"export JOB_DIR={q(str(job.job_dir))}",
        "",
        "# 1. On every node: GPUs against the plan, environment, weights, fixes, smoke; a report",
        "#    each under $JOB_DIR/reports/$SLURM_JOB_ID/. A failing node does not stop the others.",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=0 "
        + " ".join(q(a) for a in node_command(job)),
        "nodes_rc=$?",
        "",
        "# 2. The nodes' reports; fails naming the node and the stage that failed.",
        " ".join(
            q(a)
            for a in [job.python, "-m", "provision", "cluster", "report", "--job-dir"]
            + [str(job.job_dir)]
        )
        + ' --job "$SLURM_JOB_ID"',
        "report_rc=$?",
        "",
        f"# 3. The launcher line ({job.launcher_name}), from this job's SLURM_* variables.",
        *launcher_block(job.launcher_name, job.gpus_per_node, job.entry),
        "echo \"launch (one per node): srun --ntasks-per-node=1 bash -c '$LAUNCH'\"",
        'echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT NNODES=$SLURM_NNODES"',
        "",
        'if [ "$report_rc" -ne 0 ]; then exit "$report_rc"; fi',
        'exit "$nodes_rc"',
    ]
    return "\n".join(header + [""] + body) + "\n"
