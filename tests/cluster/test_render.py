"""`provision cluster slurm` without submitting: the script, the launcher line, bad input; and
the launcher line expanded by a real two-node Slurm job."""

from __future__ import annotations

import subprocess

import pytest

from provision.cluster.render import SlurmJob, launcher_block, launcher_line
from tests.cli_helpers import invoke, invoke_json
from tests.cluster.conftest import PROFILE, write_profile


@pytest.fixture
def world(tmp_path, monkeypatch):
    write_profile(tmp_path / "profiles")
    monkeypatch.setenv("PROVISION_PROFILES_DIR", str(tmp_path / "profiles"))
    lock = tmp_path / "pylock.toml"
    lock.write_text('lock-version = "1.0"\ncreated-by = "test"\n[[packages]]\nname = "a"\n')
    return {"root": tmp_path, "lock": lock, "shared": tmp_path / "shared"}


def render(world, *extra: str):
    return invoke(
        "cluster", "slurm", PROFILE, "--shared-dir", str(world["shared"]),
        "--lock", str(world["lock"]), *extra,
    )  # fmt: skip


def test_the_script_carries_the_options_and_is_valid_bash(world):
    proc = render(
        world, "--nodes", "4", "--gpus-per-node", "8", "--gpu", "A100-80GB",
        "--partition", "gpu", "--time", "2:00:00", "--task", "infer",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    script = world["shared"] / "cluster" / PROFILE / "job.sbatch"
    text = script.read_text()
    for line in ("--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--time=2:00:00"):
        assert f"#SBATCH {line}" in text
    assert "--ntasks-per-node=1" in text and "cluster node" in text and "cluster report" in text
    assert "--gpu 'NVIDIA A100-SXM4-80GB'" in text  # the catalogue's name, checked on each node
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # The job works on its own copy of the lock, where the nodes record weights and smoke.
    assert (world["shared"] / "cluster" / PROFILE / "pylock.toml").read_text() == (
        world["lock"].read_text()
    )
    assert "torchrun --nnodes=" in proc.stdout  # printed with the script
    no_gres = render(world, "--no-gres", "--gpus-per-node", "8")
    assert no_gres.returncode == 0
    assert "#SBATCH --gpus-per-node" not in script.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "two hours"], "is not a Slurm time"),
        (["--nodes", "0"], "must be at least 1"),
        (["--partition", "a b"], "--partition"),
        (["--launcher", "mpirun"], "--launcher mpirun: unknown"),
        (["--gpu", "Quantum 9000"], "Quantum 9000"),
        (["--wait"], "--wait follows a submitted job"),
    ],
)
def test_bad_input_is_one_message(world, args, message):
    proc = render(world, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_lock_relative_dir_and_no_slurm(world, tmp_path):
    proc = invoke("cluster", "slurm", PROFILE, "--shared-dir", str(world["shared"]),
                   "--lock", str(tmp_path / "none.toml"))  # fmt: skip
    assert proc.returncode == 2 and "No lockfile at" in proc.stderr
    assert f"provision lock {PROFILE}" in proc.stderr
    proc = invoke("cluster", "slurm", PROFILE, "--shared-dir", "rel/dir",
                   "--lock", str(world["lock"]))  # fmt: skip
    assert proc.returncode == 2 and "must be an absolute path" in proc.stderr
    proc = invoke("cluster", "slurm", "no-such-thing", "--shared-dir", str(world["shared"]))
    assert proc.returncode == 2 and "neither a profile nor a direction" in proc.stderr
    # --submit where Slurm's commands are not on PATH.
    proc = invoke(
        "cluster", "slurm", PROFILE, "--shared-dir", str(world["shared"]),
        "--lock", str(world["lock"]), "--submit", env={"PATH": "/nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 2 and "`sbatch` is not on PATH" in proc.stderr


def test_json_and_default_launcher_from_the_stack(world):
    rc, out = invoke_json("cluster", "slurm", PROFILE, "--shared-dir", str(world["shared"]),
                       "--lock", str(world["lock"]))  # fmt: skip
    assert rc == 0 and out["job"]["launcher"] == "torchrun" and out["job_id"] is None
    assert out["job"]["env_mode"] == "shared"
    assert launcher_line("ms-swift", 8).startswith('NNODES="$SLURM_NNODES" NODE_RANK=')


# Each launcher's node-rank flag, as it appears once per node.
RANKS = {
    "torchrun": ("--node-rank=0", "--node-rank=1"),
    "deepspeed": ("--node_rank=0", "--node_rank=1"),
    "ms-swift": ("NODE_RANK=0", "NODE_RANK=1"),
}


@pytest.mark.slurm
def test_the_launcher_lines_expand_on_every_node_of_a_real_job(slurm_cluster, tmp_path):
    """Every launcher's block, one after another in one real two-node job (one job, not three:
    the scheduler's start-up is most of a job's time), each run on both nodes as the script tells
    the user to run it, with `echo` in front of the launcher."""
    script = ["#!/bin/bash", "set -eu", f"JOB_DIR={tmp_path}"]
    for name in RANKS:
        script += launcher_block(name, 8, "train.py --cfg a.yaml")
        script += [
            "export LAUNCH",
            f"srun --ntasks-per-node=1 bash -c 'eval \"echo {name}: $LAUNCH\"'",
        ]
    (tmp_path / "job.sh").write_text("\n".join(script) + "\n")
    out = tmp_path / "out.txt"
    proc = slurm_cluster.run(
        "sbatch", "--parsable", "-N", "2", "--ntasks-per-node=1", "-o", str(out),
        str(tmp_path / "job.sh"),
    )  # fmt: skip
    job = proc.stdout.strip()
    assert slurm_cluster.wait_gone(job) in ("COMPLETED", "GONE"), slurm_cluster.logs()
    lines = out.read_text().splitlines()
    port = 20000 + int(job) % 20000
    for name, ranks in RANKS.items():
        got = sorted(line for line in lines if line.startswith(f"{name}: "))
        assert len(got) == 2, (name, lines)
        for line, rank in zip(got, sorted(ranks), strict=True):
            assert rank in line and "127.0.0.1" in line and str(port) in line, line
            assert any(n in line for n in ("NNODES=2", "--nnodes=2", "--num_nodes=2")), line
            assert "train.py --cfg a.yaml" in line and "8" in line
    assert (tmp_path / f"hostfile-{job}").read_text() == "n1 slots=8\nn2 slots=8\n"


def test_job_dataclass_defaults(tmp_path):
    job = SlurmJob(target=PROFILE, kind="profile", lock=tmp_path / "l", shared_dir=tmp_path)
    assert job.env_mode == "shared" and job.job_dir == tmp_path / "cluster" / PROFILE
