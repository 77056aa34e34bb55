"""One node of a `provision cluster slurm` job: the stages, and the node's report.

Stages, in order, each recorded in `<job dir>/reports/<job id>/<node>.json` as it ends:

- gpus: this node's GPUs through NVML against the plan (count, and memory when the plan names a
  GPU). A node where NVML sees no GPU (a CI machine) uses the plan's declared GPUs and says so.
- shared environment (no --node-local-dir): `provision setup` from the job's lock into
  `<shared>/envs/<name>` with the weights in `<shared>/huggingface`, under a lease (NFS-safe lock,
  provision/cluster/lease.py): the first node builds, the others wait, then find every stage done.
- node-local (--node-local-dir): under the lease, the weights go once into the shared cache
  (`fetch`); then, on each node at once, they are copied onto local disk (`stage`) and setup
  builds the node's own environment there, hashing the staged files against the lock.

Setup's own state file makes every stage resumable: a job cancelled half-way leaves the
environment, the partial download and the finished stages, and the next job goes on from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text
from provision.cluster.render import NODE_PLACEHOLDER, safe_name
from provision.errors import ProvisionError

# Cache variables a user's shell may carry into the job (sbatch exports the environment): the
# job's layout (--shared-dir / --node-local-dir) decides where the caches are instead.
_CACHE_VARS = ("HF_HOME", "HF_HUB_CACHE", "MODELSCOPE_CACHE")


@dataclass
class NodeOptions:
    target: str
    shared_dir: Path
    kind: str = "profile"
    task: str = "infer"
    node_local_dir: str | None = None  # may hold %N, the node's name
    gpus_per_node: int = 1
    gpu: str | None = None
    source: str = "auto"
    profiles_dir: str | None = None
    stale_after: float = 60.0
    node: str = field(default_factory=lambda: os.environ.get("SLURMD_NODENAME", ""))
    job_id: str = field(default_factory=lambda: os.environ.get("SLURM_JOB_ID", "manual"))

    def __post_init__(self) -> None:
        self.node = self.node or socket.gethostname()

    @property
    def name(self) -> str:
        return safe_name(self.target)

    @property
    def job_dir(self) -> Path:
        return self.shared_dir / "cluster" / self.name

    @property
    def local_dir(self) -> Path | None:
        if self.node_local_dir is None:
            return None
        return Path(self.node_local_dir.replace(NODE_PLACEHOLDER, self.node))


class NodeReport:
    """The node's report, rewritten (atomically) after every stage, so a node that dies leaves
    the last stage it reached."""

    def __init__(self, options: NodeOptions) -> None:
        self.path = report_path(options.job_dir, options.job_id, options.node)
        self.data: dict[str, Any] = {
            "node": options.node,
            "host": socket.gethostname(),
            "job": options.job_id,
            "target": options.target,
            "env_mode": "local" if options.local_dir else "shared",
            "env": None,
            "running": None,
            "ok": None,
            "failed": None,
            "stages": [],
            "started": _now(),
        }
        self.closed = False  # cancelled: what the unwinding stages say after it is not kept
        self.write()

    def cancel(self) -> None:
        """Record the cancellation at the stage running now, at once: after SIGTERM, Slurm
        sends SIGKILL KillWait seconds later, which may come before the stages unwind."""
        if self.closed:
            return
        stage = self.data.get("running") or _last_stage(self)
        self.stage(stage, "failed", "cancelled (SIGTERM): the next job resumes from here")
        self.finish(False)
        self.closed = True

    def running(self, stage: str) -> None:
        if self.closed:
            return
        self.data["running"] = stage
        self.write()

    def stage(self, name: str, status: str, detail: str = "", seconds: float = 0.0) -> None:
        if self.closed:
            return
        self.data["stages"].append(
            {"stage": name, "status": status, "detail": detail, "seconds": round(seconds, 3)}
        )
        self.data["running"] = None
        if status == "failed" and self.data["failed"] is None:
            self.data["failed"] = {"stage": name, "message": detail}
        self.write()

    def finish(self, ok: bool) -> None:
        if self.closed:
            return
        self.data["ok"] = ok
        self.data["running"] = None
        self.data["ended"] = _now()
        self.write()

    def write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def report_path(job_dir: Path, job_id: str, node: str) -> Path:
    return job_dir / "reports" / safe_name(job_id) / f"{safe_name(node)}.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class NodeFailed(ProvisionError):
    """A stage failed on this node; the message names the node and the stage."""

    code = "node_failed"
    exit_code = 1


# --- the GPU stage -------------------------------------------------------------------------------


def gpu_stage(options: NodeOptions) -> tuple[str, str]:
    """(status, detail): done when the node's GPUs meet the plan, declared when NVML sees none."""
    from provision.hardware.probe import probe_nvml

    machine = probe_nvml()
    want = options.gpus_per_node
    plan = f"{want} x {options.gpu}" if options.gpu else f"{want} GPU(s)"
    if machine is None or not machine.gpus:
        if want == 0:
            return "done", "no GPU planned and none seen"
        return "declared", (
            f"NVML sees no GPU on {options.node}: using the plan's declared {plan} "
            "(nothing was checked on this node)"
        )
    have = machine.gpus
    names = ", ".join(sorted({g.name for g in have}))
    if len(have) < want:
        raise ProvisionError(
            f"{options.node} has {len(have)} GPU(s) ({names}); the plan needs {plan}.",
            "Ask Slurm for nodes with enough GPUs (--gpus-per-node, --partition).",
        )
    if options.gpu:
        from provision.hardware.catalogue import lookup

        need = lookup(options.gpu).memory_total
        small = [g for g in have if g.memory_total < need * 0.97]
        if len(have) - len(small) < want:
            gib = small[0].memory_total / 1024**3
            raise ProvisionError(
                f"{options.node}: {small[0].name} has {gib:.1f} GiB; the plan needs {plan} "
                f"({need / 1024**3:.1f} GiB each).",
                "Pick a partition with that GPU, or plan with this one (`provision check --gpu`).",
            )
    return "done", f"{len(have)} x {names} meets the plan ({plan})"


# --- staging the weights onto node-local disk ----------------------------------------------------


def stage_tree(src: Path, dst: Path) -> tuple[int, int]:
    """Copy `src` (a hub cache folder: blobs, snapshots of symlinks, refs) to `dst`; files that
    are already there at the same size are kept. Each file lands by rename. (copied, kept) bytes."""
    copied = kept = 0
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in dirs + files:
            s, d = Path(root) / name, dst / rel / name
            if s.is_symlink():
                target = os.readlink(s)
                if Path(target).is_absolute():  # the shared path would tie the node to it
                    target = os.path.relpath(s.resolve(), s.parent)
                if not (d.is_symlink() and os.readlink(d) == target):
                    tmp = d.with_name(f".{d.name}.staging")
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                    os.symlink(target, tmp)
                    os.replace(tmp, d)
                continue
            if name in dirs or name.endswith(".incomplete") or name.endswith(".lock"):
                continue
            size = s.stat().st_size
            if d.is_file() and not d.is_symlink() and d.stat().st_size == size:
                kept += size
                continue
            tmp = d.with_name(f".{d.name}.staging")
            shutil.copyfile(s, tmp)
            os.replace(tmp, d)
            copied += size
    return copied, kept


def _hf_folder(cache: Path, repo_id: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


# --- the node ------------------------------------------------------------------------------------


class _Cancelled(KeyboardInterrupt):
    pass


def run_node(options: NodeOptions) -> dict[str, Any]:
    """Run this node's stages; return its report (raise NodeFailed naming node and stage)."""
    for key in _CACHE_VARS:
        os.environ.pop(key, None)
    report = NodeReport(options)

    # scancel sends SIGTERM first: the report says so at once, then the exception unwinds the
    # stages (setup's state keeps what finished) and lets the lease go. A download's worker
    # threads may outlive the grace period: then SIGKILL ends the process with the lease still
    # there, and the next job breaks it (its holder is dead, or silent for --stale-after).
    def on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
        report.cancel()
        raise _Cancelled()

    signal.signal(signal.SIGTERM, on_sigterm)
    stage = "gpus"
    try:
        report.running(stage)
        started = time.monotonic()
        status, detail = gpu_stage(options)
        report.stage(stage, status, detail, time.monotonic() - started)
        if options.local_dir is None:
            _shared(options, report)
        else:
            _local(options, report)
    except _Cancelled:
        report.cancel()
        raise
    except ProvisionError as exc:
        failed = report.data.get("failed")
        if failed is None:
            stage = report.data.get("running") or _last_stage(report)
            report.stage(stage, "failed", exc.message)
            failed = report.data["failed"]
        report.finish(False)
        raise NodeFailed(
            f"node {options.node}, stage {failed['stage']}: {exc.message}", exc.hint
        ) from exc
    report.finish(True)
    return report.data


def _last_stage(report: NodeReport) -> str:
    stages = report.data["stages"]
    return stages[-1]["stage"] if stages else "start"


def _setup_callback(report: NodeReport):  # noqa: ANN202
    from provision.setup import STAGES

    def on_stage(done: Any) -> None:
        report.stage(done.name, done.status, done.detail, done.seconds)
        # The stage after this one is the one running now (for a report read mid-job).
        following = STAGES[STAGES.index(done.name) + 1 :] if done.name in STAGES else ()
        if done.status in ("done", "skipped") and following:
            report.running(following[0])

    return on_stage


def _lease(options: NodeOptions, report: NodeReport):  # noqa: ANN202
    from provision.cluster.lease import lease

    return lease(
        options.job_dir / "locks" / "setup.lease",
        timeout=float(os.environ.get("PROVISION_CLUSTER_LEASE_TIMEOUT", "21600")),
        node=options.node,
        job=options.job_id,
        stale_after=options.stale_after,
        heartbeat=max(1.0, min(10.0, options.stale_after / 6)),
    )


def _download_result(stdout: str) -> dict[str, Any]:
    """The result inside `provision --json download`'s envelope ({version, command, ok, result,
    error}: docs/json.md); one message when it is not one."""
    try:
        doc = json.loads(stdout)
        result = doc["result"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"the download printed no JSON envelope: {stdout[-300:]!r}") from exc
    if not isinstance(result, dict):
        raise ProvisionError(f"the download's JSON result is not an object: {result!r:.300}")
    return result


def _wait_note(taken: Any) -> str:
    parts = [f"waited {taken.waited:.1f} s"]
    if taken.last_holder:
        from provision.cluster.lease import describe

        parts.append(f"after {describe(taken.last_holder)}")
    for gone in taken.broke:
        parts.append(f"broke a stale lock left by node {gone.get('node', '?')}")
    return "; ".join(parts)


def _options(options: NodeOptions, env: Path, lock: Path, data_dir: Path):  # noqa: ANN202
    from provision.setup import SetupOptions

    return SetupOptions(
        task=options.task,
        env=env,
        from_lock=lock,
        source=options.source,
        skip_check=True,  # the gpus stage checked this node against the plan
        profiles_dir=options.profiles_dir,
        data_dir=data_dir,
    )


def _run_setup(options: NodeOptions, setup_options: Any, report: NodeReport) -> None:
    from provision.setup import run_setup

    on_stage = _setup_callback(report)
    if options.kind == "direction":
        from provision.directions import load_direction
        from provision.directions.setup import setup_direction

        direction = load_direction(
            options.target, profiles_dir=options.profiles_dir, data_dir=setup_options.data_dir
        )
        setup_direction(direction, setup_options, on_stage=on_stage)
    else:
        run_setup(options.target, setup_options, on_stage)


def _shared(options: NodeOptions, report: NodeReport) -> None:
    shared = options.shared_dir
    env = shared / "envs" / options.name
    report.data["env"] = str(env)
    report.running("lease")
    started = time.monotonic()
    with _lease(options, report) as taken:
        report.stage("lease", "done", _wait_note(taken), time.monotonic() - started)
        report.running("check")
        _run_setup(options, _options(options, env, options.job_dir / "pylock.toml", shared), report)
        taken.check()


def _local(options: NodeOptions, report: NodeReport) -> None:
    if options.kind == "direction":
        raise ProvisionError(
            "--node-local-dir is for profiles; a direction's environment is shared.",
            "Leave out --node-local-dir (one environment on the shared file system).",
        )
    from provision.lock.lockfile import read_lock, tool_table
    from provision.profiles import load_profile

    local = options.local_dir
    assert local is not None
    job_lock = options.job_dir / "pylock.toml"
    shared_hf = options.shared_dir / "huggingface"
    report.running("fetch")
    started = time.monotonic()
    with _lease(options, report) as taken:
        waited = _wait_note(taken)
        # The download runs in its own interpreter: the hub clients read their cache variables
        # at import, and this process later points them at the node-local copy.
        env = {**os.environ, "HF_HOME": str(shared_hf)}
        env["MODELSCOPE_CACHE"] = str(options.shared_dir / "modelscope")
        argv = [sys.executable, "-m", "provision", "--json", "download", options.target]
        argv += ["--lock", str(job_lock), "--source", options.source]
        if options.profiles_dir:
            argv += ["--profiles-dir", options.profiles_dir]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ProvisionError(
                f"the download into the shared cache failed: {proc.stderr.strip()[-500:]}"
            )
        got = _download_result(proc.stdout)
        taken.check()
        fetched = got.get("bytes_fetched", 0)
        report.stage(
            "fetch",
            "done",
            f"{got.get('repo_id')}@{str(got.get('commit'))[:12]} in {shared_hf}: "
            f"{fetched / 1024**2:.1f} MiB fetched, "
            f"{got.get('bytes_reused', 0) / 1024**2:.1f} MiB already there; {waited}",
            time.monotonic() - started,
        )
        local.mkdir(parents=True, exist_ok=True)
        node_lock = local / "pylock.toml"
        data = read_lock(job_lock)
        wanted = (data.get("packages"), tool_table(data).get("model"))
        current = None
        if node_lock.is_file():
            mine = read_lock(node_lock)
            current = (mine.get("packages"), tool_table(mine).get("model"))
        if current != wanted:
            atomic_write_text(node_lock, job_lock.read_text())
    report.running("stage")
    started = time.monotonic()
    profile = load_profile(options.target, options.profiles_dir)
    src = _hf_folder(shared_hf / "hub", profile.hf_repo)
    copied, kept = stage_tree(src, _hf_folder(local / "huggingface" / "hub", profile.hf_repo))
    report.stage(
        "stage",
        "done",
        f"{copied / 1024**2:.1f} MiB copied to {local}, {kept / 1024**2:.1f} MiB already there",
        time.monotonic() - started,
    )
    env_path = local / "envs" / options.name
    report.data["env"] = str(env_path)
    report.running("check")
    _run_setup(options, _options(options, env_path, node_lock, local), report)
