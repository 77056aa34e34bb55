"""Write the job's files, hand the script to sbatch, follow the job, and read the nodes' reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text
from provision.cluster.render import SlurmJob, launcher_line, render_script, validate
from provision.errors import CheckFailed, ProvisionError

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


@dataclass
class Rendered:
    job: SlurmJob
    script: Path
    text: str
    launcher: str
    lock_note: str
    job_id: str | None = None
    state: str | None = None
    report: JobReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job.to_json(),
            "script": str(self.script),
            "launcher": self.launcher,
            "lock": self.lock_note,
            "job_id": self.job_id,
            "state": self.state,
            "report": None if self.report is None else self.report.to_json(),
        }


def _packages(path: Path) -> Any:
    from provision.lock.lockfile import read_lock

    data = read_lock(path)
    return data.get("packages"), data.get("requires-python")


def prepare(job: SlurmJob) -> Rendered:
    """Validate, copy the lock into the job folder, write the script there; nothing submitted.

    The job's copy of the lock is where the nodes record the weights and the smoke; it is kept
    while its package set is the one given, so a second job reuses those records."""
    validate(job)
    try:
        job.job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"Cannot make {job.job_dir}: {exc.strerror}.",
            "--shared-dir must be a folder on the shared file system that you can write.",
        ) from exc
    if job.job_lock.is_file() and _packages(job.job_lock) == _packages(job.lock):
        note = f"{job.job_lock} kept (same packages as {job.lock}; it holds the recorded weights)"
    else:
        atomic_write_text(job.job_lock, job.lock.read_text())
        note = f"{job.lock} copied to {job.job_lock}"
    text = render_script(job)
    script = job.job_dir / "job.sbatch"
    atomic_write_text(script, text)
    line = launcher_line(job.launcher_name, job.gpus_per_node, job.entry)
    return Rendered(job, script, text, line, note)


def _slurm(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise ProvisionError(
            f"`{argv[0]}` is not on PATH: this is not a Slurm login node.",
            "Run it where Slurm's commands are, or leave out --submit to only render the script.",
        )
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def submit(rendered: Rendered) -> str:
    proc = _slurm("sbatch", "--parsable", str(rendered.script))
    if proc.returncode != 0:
        raise ProvisionError(f"sbatch refused {rendered.script}: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise ProvisionError(f"sbatch answered {proc.stdout.strip()!r}, not a job id.")
    rendered.job_id = job_id
    return job_id


def job_state(job_id: str) -> str:
    """Slurm's state for the job; GONE once its record has aged out (MinJobAge)."""
    proc = _slurm("scontrol", "show", "job", job_id)
    if proc.returncode != 0:
        return "GONE" if "Invalid job id" in proc.stderr else "UNKNOWN"
    for word in proc.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "UNKNOWN"


def wait(job_id: str, poll: float = 2.0, timeout: float | None = None) -> str:
    started = time.monotonic()
    last = "UNKNOWN"
    while True:
        state = job_state(job_id)
        if state in ENDED or state == "GONE":
            return last if state == "GONE" else state
        last = state
        if timeout is not None and time.monotonic() - started > timeout:
            raise ProvisionError(f"job {job_id} still {state} after {timeout:.0f} s.")
        time.sleep(poll)


# --- the nodes' reports --------------------------------------------------------------------------


@dataclass
class JobReport:
    job_id: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # allocated nodes with no report

    @property
    def problems(self) -> list[str]:
        out = []
        for node in self.nodes:
            if node.get("failed"):
                f = node["failed"]
                out.append(f"node {node['node']} failed at stage {f['stage']}: {f['message']}")
            elif node.get("ok") is not True:
                where = node.get("running") or (node["stages"] or [{"stage": "start"}])[-1]["stage"]
                out.append(f"node {node['node']} stopped during stage {where} (no end recorded)")
        out += [f"node {n}: no report (it never started the stages)" for n in self.missing]
        return out

    @property
    def ok(self) -> bool:
        return bool(self.nodes) and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "ok": self.ok,
            "problems": self.problems,
            "nodes": self.nodes,
            "missing": self.missing,
        }


def allocated_nodes(nodelist: str | None) -> list[str]:
    if not nodelist or shutil.which("scontrol") is None:
        return []
    proc = _slurm("scontrol", "show", "hostnames", nodelist)
    return proc.stdout.split() if proc.returncode == 0 else []


def collect(job_dir: Path, job_id: str, expected: list[str] | None = None) -> JobReport:
    folder = job_dir / "reports" / job_id
    report = JobReport(job_id)
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {"node": path.stem, "stages": [], "ok": False, "failed": None}
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            data = {"node": path.stem, "stages": [], "ok": False, "failed": None}
        report.nodes.append(data)
    seen = {n.get("node") for n in report.nodes}
    report.missing = [n for n in expected or [] if n not in seen]
    return report


def require_ok(report: JobReport) -> None:
    if not report.nodes and not report.missing:
        raise CheckFailed(f"job {report.job_id}: no node wrote a report.")
    if report.problems:
        raise CheckFailed(f"job {report.job_id}: " + "; ".join(report.problems))


def target_kind(target: str, task: str, profiles_dir: str | None) -> tuple[str, Path, str | None]:
    """(profile | direction, its default lock, the task's stack) for a name."""
    from provision.lock.lockfile import lock_path
    from provision.profiles import load_profile

    try:
        profile = load_profile(target, profiles_dir)
    except ProvisionError as not_profile:
        from provision.directions import load_direction
        from provision.directions.lock import direction_lock_path

        try:
            direction = load_direction(target, profiles_dir=profiles_dir)
        except ProvisionError:
            raise ProvisionError(
                f"'{target}' is neither a profile nor a direction.",
                "`provision profiles` and `provision direction list` list the names.",
            ) from not_profile
        return "direction", direction_lock_path(direction.name), None
    return "profile", lock_path(profile.name, task=task), profile.task(task).stack
