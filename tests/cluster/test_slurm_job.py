"""`provision cluster slurm` on a real one-host Slurm cluster (n1, n2): a job for a tiny model from
the local hub, a second job that reuses it, a job cancelled half-way that the next one resumes,
and node-local environments staged from the shared cache. No GPU here: the reports say the
plan's declared GPUs were used."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli_helpers import run_json
from tests.cluster.conftest import PROFILE

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def slurm_args(world: dict, *extra: str) -> list[str]:
    return [
        "cluster",
        "slurm",
        PROFILE,
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--gpu",
        "A100-80GB",
        "--no-gres",  # the CI cluster has no GPUs configured as GRES
        "--shared-dir",
        str(world["shared"]),
        "--lock",
        str(world["lock"]),
        *extra,
    ]


def by_node(report: dict) -> dict[str, dict[str, str]]:
    return {
        n["node"]: {s["stage"]: s["status"] for s in n["stages"]} for n in report["report"]["nodes"]
    }


def detail(report: dict, node: str, stage: str) -> str:
    n = next(n for n in report["report"]["nodes"] if n["node"] == node)
    return next(s["detail"] for s in n["stages"] if s["stage"] == stage)


def test_a_job_provisions_both_nodes_and_a_second_job_reuses_it(cluster_world):
    world, hub = cluster_world, cluster_world["hub"]
    rc, first = run_json(*slurm_args(world, "--submit", "--wait"), timeout=1800)
    assert rc == 0, json.dumps(first, indent=1)[-4000:]
    assert first["state"] == "COMPLETED" and first["report"]["ok"]
    stages = by_node(first)
    assert set(stages) == {"n1", "n2"}
    for node, got in stages.items():
        # No GPU on CI: the plan's GPUs stand in, and the report says so.
        assert got["gpus"] == "declared"
        assert "NVML sees no GPU" in detail(first, node, "gpus")
        assert "1 x NVIDIA A100-SXM4-80GB" in detail(first, node, "gpus")
        for stage in ("lease", "env", "weights", "fixes", "smoke"):
            assert got[stage] in ("done", "skipped"), (node, stage, got)
    # One node built the shared environment, fetched the weights and ran the smoke under the
    # lock; the other waited, then found each stage done.
    builders = [n for n, got in stages.items() if got["env"] == "done"]
    assert len(builders) == 1, stages
    other = ({"n1", "n2"} - set(builders)).pop()
    assert stages[builders[0]]["weights"] == "done" and stages[builders[0]]["smoke"] == "done"
    assert stages[other]["env"] == "skipped" and stages[other]["weights"] == "skipped"
    assert stages[other]["smoke"] == "skipped"
    assert f"after held by node {builders[0]}" in detail(first, other, "lease")
    env = world["shared"] / "envs" / PROFILE
    python = env / "bin" / "python"
    assert python.exists()
    served = hub.bytes_for("*.safetensors")
    size = world["model_bytes"]
    assert 0 < served <= size + 64 * 1024  # the weights crossed the wire once
    # The launcher line came out of the job with the job's own values.
    out = (world["shared"] / "cluster" / PROFILE / f"slurm-{first['job_id']}.out").read_text()
    assert "launch (one per node): srun --ntasks-per-node=1 bash -c 'torchrun" in out
    assert "MASTER_ADDR=127.0.0.1" in out and "NNODES=2" in out

    # A second job: nothing rebuilt, nothing downloaded.
    cfg_before = (env / "pyvenv.cfg").stat()
    rc, second = run_json(*slurm_args(world, "--submit", "--wait"), timeout=1800)
    assert rc == 0, json.dumps(second, indent=1)[-4000:]
    for node, got in by_node(second).items():
        assert (got["env"], got["weights"], got["smoke"]) == ("skipped",) * 3, (node, got)
    assert hub.bytes_for("*.safetensors") == served
    after = (env / "pyvenv.cfg").stat()
    assert (after.st_ino, after.st_mtime_ns) == (cfg_before.st_ino, cfg_before.st_mtime_ns)


def _reports(world: dict, job_id: str) -> list[dict]:
    folder = world["shared"] / "cluster" / PROFILE / "reports" / job_id
    out = []
    for path in folder.glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return out


def test_a_job_cancelled_half_way_is_resumed_by_the_next(cluster_world):
    world, hub, cluster = cluster_world, cluster_world["hub"], cluster_world["cluster"]
    hub.fault("*.safetensors", throttle=20_000)  # ~0.4 MB of weights: ~20 s at this rate
    rc, submitted = run_json(*slurm_args(world, "--submit"), timeout=600)
    assert rc == 0, submitted
    job_id = submitted["job_id"]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        time.sleep(0.5)
        running = [r.get("running") for r in _reports(world, job_id)]
        if "weights" in running and hub.bytes_for("*.safetensors") > 40_000:
            break
        assert cluster.job_state(job_id) in ("PENDING", "RUNNING"), cluster.logs()
    else:
        pytest.fail("the job never reached the download")
    cluster.run("scancel", job_id)
    cluster.wait_gone(job_id)
    reports = {r["node"]: r for r in _reports(world, job_id)}
    cancelled = [r for r in reports.values() if (r["failed"] or {}).get("stage") == "weights"]
    assert cancelled and "cancelled" in cancelled[0]["failed"]["message"], reports
    assert all(r["ok"] is False for r in reports.values())
    # The download's worker outlived SIGTERM's grace period, so SIGKILL left the lock behind
    # (or, when it did not, the lock was let go); either way the next job must not wait for it.
    left = (world["shared"] / "cluster" / PROFILE / "locks" / "setup.lease").exists()

    hub.wait_idle()
    sent_before = hub.bytes_for("*.safetensors")
    hub.clear_faults()
    hub.reset_counters()
    rc, resumed = run_json(*slurm_args(world, "--submit", "--wait"), timeout=1800)
    assert rc == 0, json.dumps(resumed, indent=1)[-4000:]
    stages = by_node(resumed)
    # The environment the cancelled job finished is reused; the download goes on.
    assert all(got["env"] == "skipped" for got in stages.values()), stages
    assert sorted(got["weights"] for got in stages.values()) == ["done", "skipped"]
    leases = " ".join(detail(resumed, n, "lease") for n in stages)
    assert ("broke a stale lock left by node" in leases) == left, leases
    size = world["model_bytes"]
    assert hub.bytes_for("*.safetensors") <= size - sent_before + 64 * 1024


def test_node_local_environments_staged_from_the_shared_cache(cluster_world, tmp_path):
    world, hub = cluster_world, cluster_world["hub"]
    local = tmp_path / "local" / "%N"  # one host here: %N keeps n1's disk apart from n2's
    rc, report = run_json(
        *slurm_args(world, "--node-local-dir", str(local), "--submit", "--wait"), timeout=2400
    )
    assert rc == 0, json.dumps(report, indent=1)[-4000:]
    stages = by_node(report)
    fetches = sorted(detail(report, n, "fetch") for n in stages)
    # The weights came over the wire once, into the shared cache; each node copied them.
    assert sum(" 0.0 MiB fetched" in d for d in fetches) == 1, fetches
    size = world["model_bytes"]
    assert hub.bytes_for("*.safetensors") <= size + 64 * 1024
    for node, got in stages.items():
        assert got["stage"] == "done" and got["env"] == "done" and got["smoke"] == "done"
        # setup hashed the staged files against the lock instead of downloading them
        assert "sha256 verified" in detail(report, node, "weights")
        node_dir = tmp_path / "local" / node
        assert (node_dir / "envs" / PROFILE / "bin" / "python").exists()
        blobs = list((node_dir / "huggingface" / "hub").rglob("blobs/*"))
        assert blobs and all(b.is_file() and not b.is_symlink() for b in blobs)


def test_a_direction_is_provisioned_the_same_way(cluster_world, monkeypatch):
    from tests.directions.helpers import lock_args, write_direction

    root = cluster_world["root"]
    write_direction(root / "directions", "tiny-dir", [(PROFILE, ["infer"])])
    monkeypatch.setenv("PROVISION_DIRECTIONS_DIR", str(root / "directions"))
    lock = root / "pylock.direction-tiny-dir.toml"
    rc, made = run_json("direction", "lock", "tiny-dir", "-o", str(lock), *lock_args(),
                        timeout=900)  # fmt: skip
    assert rc == 0, made
    rc, report = run_json(
        "cluster", "slurm", "tiny-dir", "--nodes", "2", "--gpus-per-node", "1", "--no-gres",
        "--shared-dir", str(cluster_world["shared"]), "--lock", str(lock), "--submit", "--wait",
        timeout=1800,
    )  # fmt: skip
    assert rc == 0, json.dumps(report, indent=1)[-4000:]
    assert report["job"]["kind"] == "direction"
    stages = by_node(report)
    assert sorted(got["env"] for got in stages.values()) == ["done", "skipped"]
    assert sorted(got["smoke"] for got in stages.values()) == ["done", "skipped"]
    assert (cluster_world["shared"] / "envs" / "tiny-dir" / "bin" / "python").exists()
