"""`provision direction setup` end to end on this machine, for real: two tiny random VLMs served
by the local hub, one uv environment from the joint lock (torch 2.13.0+cpu, transformers 4.51.3
with the group-beam-search fix), every member's weights in the shared cache, both smokes.

Two `direction setup` processes start at once for two users: they wait for each other on the
environment's lock, and the result is one environment, made once, that matches the lock, with
both smokes passing and both users in the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from provision.envs import ensure_env, env_python, installed_packages
from provision.lock.reader import lock_info
from tests.cli_helpers import result_of
from tests.directions.conftest import PAIR_MEMBERS, Dirs, TinyPair, make_dirs
from tests.directions.helpers import lock_args, tool
from tests.hub.helpers import make_vqa_dataset
from tests.servers.hub import HubServer
from tests.tinymodels import build_tiny_vlm

pytestmark = pytest.mark.slow
DATASET = "org/tiny-vqa"
GATED = "org/gated-vqa"  # FoodieQA-like: setup goes on without it and says so


@dataclass
class Run:
    user: str
    code: int
    payload: dict[str, Any]
    stderr: str
    seconds: float


@dataclass
class Pair:
    dirs: Dirs
    hub: HubServer
    commits: dict[str, str]  # repo id -> commit
    runs: list[Run]
    relocked: Path  # the lock as the session fixture made it, to compare with
    env: Path

    def cli_env(self, **extra: str) -> dict[str, str]:
        return {**base_env(self.dirs), **extra}


def setup_command(hub_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "provision", "--json", "direction", "setup", "tiny-pair",
        "--source", hub_url, *lock_args(), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pair(tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("direction-setup")
    dirs = make_dirs(root)
    tiny_pair.copy_into(dirs)
    # The direction lists a dataset: setup fetches and pins it with the weights (issue 16).
    direction = dirs.directions / "tiny-pair.toml"
    direction.write_text(f"datasets = [{DATASET!r}, {GATED!r}]\n" + direction.read_text())
    dataset = make_vqa_dataset(root / "datasets" / "tiny-vqa")
    lock = dirs.locks / "pylock.direction-tiny-pair.toml"
    # The tiny models are written by the transformers that will load them: an env from the
    # same lock (uv's cache makes it cheap), not the one under test.
    builder = ensure_env(root / "builder", lock).python
    relocked = root / "as-locked.toml"
    shutil.move(lock, relocked)  # the first setup locks again; the second finds it current
    with ThreadPoolExecutor(max_workers=2) as pool:  # each build is mostly one import
        built = {
            repo_id: pool.submit(build_tiny_vlm, root / "models" / kind, kind, builder)
            for repo_id, kind, _extra in PAIR_MEMBERS.values()
        }
        folders = {repo_id: future.result() for repo_id, future in built.items()}
    with HubServer(root / "hub") as hub:
        commits = {repo_id: hub.add_repo(repo_id, folder) for repo_id, folder in folders.items()}
        hub.add_repo(DATASET, dataset, repo_type="dataset")
        hub.add_repo(GATED, dataset, repo_type="dataset", gated=True)  # no token: refused
        runs = _concurrent_setups(hub.url, dirs, ["alice", "bob"])
        yield Pair(dirs, hub, commits, runs, relocked, dirs.data / "envs" / "direction-tiny-pair")


# What would send the weights anywhere but the data disk's shared cache.
OUTSIDE = (
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "MODELSCOPE_CACHE",
    "HF_ENDPOINT",
)


def base_env(dirs: Dirs) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    env.update(dirs.env(), HF_HUB_DISABLE_TELEMETRY="1", COLUMNS="200")
    # Bytecode cached outside the envs: each smoke would otherwise recompile torch (~10 s). The
    # envs are this test's own, so their bytecode goes with the test's folder.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(dirs.root / "pycache")
    return env


def _concurrent_setups(hub_url: str, dirs: Dirs, users: list[str]) -> list[Run]:
    base = base_env(dirs)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            setup_command(hub_url),
            env={**base, "PROVISION_USER": user},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user in users
    ]
    runs = []
    for user, proc in zip(users, procs, strict=True):
        out, err = proc.communicate(timeout=1500)
        try:
            payload = result_of(SimpleNamespace(stdout=out, returncode=proc.returncode))
        except AssertionError:
            payload = {"stdout": out}
        runs.append(Run(user, proc.returncode, payload, err, time.perf_counter() - started))
    return runs


def _stages(run: Run) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in run.payload["setup"]["stages"]}


def test_concurrent_setups_make_one_environment_and_both_smokes_pass(pair):
    for run in pair.runs:
        assert run.code == 0, f"{run.user}: {run.payload}\n{run.stderr}"
        assert run.payload["ok"] is True
        assert run.payload["env"] == str(pair.env)

    # One of them made the lock and the environment, fetched the weights and ran both smokes;
    # the other waited for it (the env's file lock), then found every stage done with the same
    # inputs: nothing made, fetched or run twice.
    first, second = sorted(pair.runs, key=lambda r: _stages(r)["env"] != "done")
    assert {k: v for k, v in _stages(first).items() if k != "check"} == {
        "lock": "done",
        "env": "done",
        "weights": "done",
        "fixes": "done",
        "smoke": "done",
    }
    assert {k: _stages(second)[k] for k in ("lock", "env", "weights", "smoke")} == dict.fromkeys(
        ("lock", "env", "weights", "smoke"), "skipped"
    )
    made = first.payload["setup"]["outputs"]["env"]
    assert made["action"] == "created"
    smokes = first.payload["setup"]["outputs"]["smoke"]
    assert set(smokes) == {"tiny-qwen", "tiny-llava"}
    for name, smoke in smokes.items():
        assert smoke["ok"] is True, (name, smoke)
        assert smoke["modes"]["greedy"]["status"] == "ok"
        # the shared transformers 4.51.3 carries the union of fixes: beam search works
        assert smoke["modes"]["group_beam"]["status"] == "ok", smoke["modes"]["group_beam"]
    assert all(
        w["bytes_fetched"] > 0 for w in first.payload["setup"]["outputs"]["weights"].values()
    )
    assert "weights" not in second.payload["setup"]["outputs"]

    # One environment on the data disk, exactly what the lock says.
    envs = sorted(p.name for p in (pair.dirs.data / "envs").iterdir() if p.is_dir())
    assert envs == ["direction-tiny-pair"]
    lock = pair.dirs.locks / "pylock.direction-tiny-pair.toml"
    assert ensure_env(pair.env, lock).action == "unchanged"
    installed = installed_packages(pair.env)
    locked = {d.name: d.version for d in lock_info(lock).packages}
    assert installed == locked
    assert installed["torch"] == "2.13.0+cpu" and installed["transformers"] == "4.51.3"
    assert installed["einops"] == "0.8.1" and "accelerate" in installed
    assert locked == {d.name: d.version for d in lock_info(pair.relocked).packages}


def test_lock_records_each_members_weights_fixes_and_smoke(pair):
    from provision.lock.lockfile import recorded_table

    lock = pair.dirs.locks / "pylock.direction-tiny-pair.toml"
    # The stages recorded into this machine's record (the lock is not rewritten): read with it.
    assert all("commit" not in m.get("model", {}) for m in tool(lock)["members"].values())
    table = recorded_table(lock, pair.dirs.data)
    for name, (repo_id, _kind, _extra) in PAIR_MEMBERS.items():
        member = table["members"][name]
        assert member["model"]["repo_id"] == repo_id
        assert member["model"]["commit"] == pair.commits[repo_id]
        assert any(f["path"] == "model.safetensors" for f in member["model"]["files"])
        assert member["smoke"]["ok"] is True
    assert "model" not in table and "smoke" not in table  # nothing at the single-profile spots
    fixes = table["fixes"]
    assert fixes["apply"] == ["group-beam-search-dtype"]
    (patched,) = fixes["files"]  # applied once, to the one shared transformers
    site = env_python(pair.env).parent.parent / "lib" / "python3.11" / "site-packages"
    content = (site / patched["file"]).read_bytes()
    assert hashlib.sha256(content).hexdigest() == patched["patched_sha256"]

    # The weights went once each into the one shared cache.
    hub_cache = pair.dirs.data / "huggingface" / "hub"
    for repo_id in pair.commits:
        folder = hub_cache / ("models--" + repo_id.replace("/", "--"))
        assert (folder / "snapshots" / pair.commits[repo_id] / "config.json").exists()


def test_setup_fetches_and_pins_the_directions_dataset_once(pair):
    from provision.lock.lockfile import recorded_table

    lock = pair.dirs.locks / "pylock.direction-tiny-pair.toml"
    commit = pair.hub.datasets[DATASET].refs["main"]
    record = recorded_table(lock, pair.dirs.data)["datasets"][DATASET]  # this machine's record
    assert record["commit"] == commit and record["repo_id"] == DATASET
    files = {f["path"] for f in record["files"]}
    assert {"data/val.jsonl", "README.md"} <= files
    folder = pair.dirs.data / "huggingface" / "hub" / "datasets--org--tiny-vqa"
    assert (folder / "snapshots" / commit / "data" / "val.jsonl").is_file()
    # Two setups at once: the second found the dataset in the cache, the hub sent it once.
    jsonl = f"{DATASET}/data/val.jsonl"
    assert (
        pair.hub.bytes_for(jsonl)
        == (folder / "snapshots" / commit / "data" / "val.jsonl").stat().st_size
    )
    details = [
        s["detail"]
        for run in pair.runs
        for s in run.payload["setup"]["stages"]
        if s["stage"] == "weights"
    ]
    assert any(f"{DATASET}@{commit[:12]}" in d for d in details), details
    # The gated one is named, with the fix, in every run; the setups still succeeded.
    assert all(f"{GATED} NOT fetched" in d and "is gated" in d for d in details), details
    assert GATED not in recorded_table(lock, pair.dirs.data)["datasets"]


def test_registry_knows_the_environment_its_direction_and_both_users(pair):
    registry = json.loads((pair.dirs.data / "envs" / "registry.json").read_text())
    entry = registry["environments"][str(pair.env)]
    assert entry["kind"] == "direction" and entry["name"] == "tiny-pair"
    assert entry["status"] == "ok"
    assert entry["members"] == ["tiny-qwen", "tiny-llava"]
    assert set(entry["users"]) == {"alice", "bob"}
    for user in ("alice", "bob"):
        assert entry["users"][user]["directions"] == ["tiny-pair"]
        assert entry["users"][user]["status"] == "ok"
    assert entry["created_by"] in ("alice", "bob")
    proc = subprocess.run(
        [sys.executable, "-m", "provision", "--json", "direction", "list"],
        env=pair.cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    listed = result_of(proc)
    (env,) = listed["environments"]
    assert env["path"] == str(pair.env) and env["exists"] is True
    rows = {r["name"]: r for r in listed["directions"]}
    assert rows["tiny-pair"]["lock_state"] == "fresh"


def test_environment_and_cache_are_group_shared(pair):
    for folder in (pair.env, pair.dirs.data / "envs", pair.dirs.data / "huggingface" / "hub"):
        mode = folder.stat().st_mode
        assert mode & stat.S_ISGID and mode & stat.S_IWGRP, (folder, oct(mode))
    # uv ran with the shared umask: what it installed is group-writable too.
    site = next((pair.env / "lib").glob("python3*/site-packages"))
    assert (site / "transformers" / "__init__.py").stat().st_mode & stat.S_IWGRP
    activate = (pair.env / "bin" / "activate").read_text()
    assert f"export HF_HOME={pair.dirs.data / 'huggingface'}" in activate


def test_setup_with_the_cache_on_a_file_system_without_symlinks(pair, exfat_dir):
    """The data disk is exFAT: setup finds out by trying a link, turns symlinks off for the hub
    clients, the cache holds copies, and the smoke loads the model from them. (Last here: it
    points the shared env's activate script at that cache.)"""
    from tests.directions.helpers import write_direction

    write_direction(
        pair.dirs.directions, "tiny-one", [("tiny-llava", ["infer"])], packages=["einops==0.8.1"]
    )
    data = exfat_dir / "data"
    # --skip-check: the tiny profiles carry a 2B model's sizes, more than this small disk holds
    command = setup_command(pair.hub.url, "--env", str(pair.env), "--skip-check")
    command[command.index("tiny-pair")] = "tiny-one"
    proc = subprocess.run(
        command,
        env=pair.cli_env(PROVISION_DATA_DIR=str(data), PROVISION_USER="dora"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = result_of(proc)
    shared = result["shared"]
    assert shared["symlinks"] is False
    assert shared["env"]["HF_HUB_DISABLE_SYMLINKS"] == "1"
    assert shared["hf_home"] == str(data / "huggingface")
    assert result["setup"]["outputs"]["smoke"]["ok"] is True
    repo_id = PAIR_MEMBERS["tiny-llava"][0]
    snapshot = (
        data / "huggingface" / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots"
        / pair.commits[repo_id]
    )  # fmt: skip
    weights = snapshot / "model.safetensors"
    assert weights.is_file() and not weights.is_symlink()
    registry = json.loads((data / "envs" / "registry.json").read_text())
    entry = registry["environments"][str(pair.env)]
    assert entry["symlinks"] is False and entry["users"]["dora"]["directions"] == ["tiny-one"]
    activate = (pair.env / "bin" / "activate").read_text()
    assert "export HF_HUB_DISABLE_SYMLINKS=1" in activate
