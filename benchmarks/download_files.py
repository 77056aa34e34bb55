"""Download time by file count: `provision download` against `hf download`, same local hub.

For each file count (default 1, 20, 200, 1000) a repository of that many small files is served by
the local test hub (tests/servers/hub.py); both tools download it into an empty cache, several
rounds in alternating order. Printed: each tool's median wall time and CPU time (user + system of
the process and its children), and the ratio provision / hf (the target from issue 17: <= 1.0 at
every size). Wall time includes the interpreter's start-up: what a user waits for.

What each side gets is what a user gets by default: 8 transfers at once on both sides
(`hf download --max-workers` defaults to 8, PROVISION_DOWNLOAD_WORKERS to 8), no hf_transfer
(HF_HUB_ENABLE_HF_TRANSFER=0; huggingface_hub 2.x ignores it anyway), no progress bars, the same
hub (plain HTTP: no Xet), a fresh cache each round (and for provision no lockfile). hf checks
each file's size; provision checks size and sha256 (and git's blob id for plain-git files)
before a file is placed, and fsyncs each file before its rename.

    python benchmarks/download_files.py [--counts 1,20,200,1000] [--file-kb 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.download import _commands, _env  # noqa: E402
from tests.hub.helpers import write_profile  # noqa: E402
from tests.servers.hub import HubServer  # noqa: E402


def _make_repo(folder: Path, files: int, size: int, seed: int) -> None:
    """`files` files in all: a config and shards in two folders (tile-sharded checkpoints and
    datasets nest their files)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bench", "files": files}))
    for i in range(files - 1):
        sub = folder / f"part-{i % 2}"
        sub.mkdir(exist_ok=True)
        (sub / f"tile-{i:05d}.bin").write_bytes(rng.randbytes(size))


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(work: Path, hub: HubServer, count: int, file_bytes: int, rounds: int) -> dict:
    repo, profile = f"bench/files-{count}", f"files-{count}"
    _make_repo(work / "src" / profile, count, file_bytes, seed=count)
    hub.add_repo(repo, work / "src" / profile)
    write_profile(work / "profiles", profile, repo)
    commands = _commands(hub, profile, repo)
    wall: dict[str, list[float]] = {"provision": [], "hf": []}
    cpu: dict[str, list[float]] = {"provision": [], "hf": []}
    for round_no in range(rounds):
        order = ["provision", "hf"] if round_no % 2 == 0 else ["hf", "provision"]
        for tool in order:
            cache = work / f"cache-{tool}"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(work / "locks", ignore_errors=True)
            w, c = _run(commands[tool], _env(work, hub, cache.name))
            wall[tool].append(w)
            cpu[tool].append(c)
    med = {tool: statistics.median(v) for tool, v in wall.items()}
    return {
        "files": count,
        "file_bytes": file_bytes,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": med,
        "median_cpu_s": {tool: statistics.median(v) for tool, v in cpu.items()},
        "ratio": med["provision"] / med["hf"],  # time: provision / hf, target <= 1.0
    }


def _commit() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,20,200,1000")
    parser.add_argument("--file-kb", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    counts = [int(c) for c in args.counts.split(",")]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="provision-bench-files-", dir=args.dir))
    rows = []
    try:
        with HubServer(work / "hub") as hub:
            for count in counts:
                rows.append(measure(work, hub, count, args.file_kb * 1024, args.rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "rows": rows,
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg": os.getloadavg(),
        "commit": _commit(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.rounds} rounds, alternating; files of {args.file_kb} KiB; {os.cpu_count()} CPUs; "
        f"load {load_before[0]:.1f} -> {result['load_avg'][0]:.1f}; commit {result['commit']}"
    )
    print(f"{'files':>6} {'provision s':>12} {'hf s':>8} {'prov CPU s':>11} {'hf CPU s':>9} "
          f"{'ratio':>6}")  # fmt: skip
    for row in rows:
        w, c = row["median_wall_s"], row["median_cpu_s"]
        print(
            f"{row['files']:6d} {w['provision']:12.2f} {w['hf']:8.2f} {c['provision']:11.2f} "
            f"{c['hf']:9.2f} {row['ratio']:5.2f}x"
        )
    print("ratio: provision's median wall time / hf's (target <= 1.00 at every size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
