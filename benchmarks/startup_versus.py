"""Start-up and lock overhead of this checkout against an older one, in one run.

    git archive REV | tar -x -C OLD && python -m compileall -q OLD/provision
    python benchmarks/startup_versus.py OLD [--runs 15] [--profile smolvlm-256m]

Both trees run with this interpreter (PYTHONPATH set to each), alternating: `python -m provision`
for `check PROFILE --gpu 'RTX 4090'` (with and without --json) and `--help`, next to
`python -c pass`; then `lock PROFILE --variant pypi --json`, whose wall time minus the seconds
provision records for its uv subprocess is provision's own share of a lock. The locks run as
re-locks with the same arguments (each tree's second run on finds the uv input its first run
stored, provision/lock/early.py) in their own XDG_CACHE_HOME; uv's cache stays where it is.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(NEW))

from benchmarks.timing import own_provision_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the older tree (from git archive)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--profile", default="smolvlm-256m", help="the profile to lock")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": NEW}
    base_env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "UV_PYTHON_DOWNLOADS": "never"}
    base_env = own_provision_cache(base_env, tempfile.mkdtemp(prefix="startup-versus-"))
    atexit.register(shutil.rmtree, base_env["XDG_CACHE_HOME"], True)

    def wall(tree: str, argv: list[str]) -> tuple[float, str]:
        env = {**base_env, "PYTHONPATH": str(trees[tree])}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "provision", *argv],
            env=env, cwd=trees[tree], capture_output=True, text=True,
        )  # fmt: skip
        return time.perf_counter() - started, done.stdout

    gpu = ["--gpu", "RTX 4090"]
    cases = {
        "check --gpu 'RTX 4090'": ["check", "qwen2.5-vl-7b", *gpu],
        "check --json": ["--json", "check", "qwen2.5-vl-7b", *gpu],
        "--help": ["--help"],
    }
    for tree in trees:  # warm the page cache once
        for argv in cases.values():
            wall(tree, argv)
    base: list[float] = []
    times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in cases}
    for i in range(args.runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"])
        base.append(time.perf_counter() - started)
        for tree in list(trees) if i % 2 == 0 else list(trees)[::-1]:
            for name, argv in cases.items():
                times[(tree, name)].append(wall(tree, argv)[0])
    own: dict[str, list[float]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as out:
        for i in range(max(3, args.runs // 3)):
            for tree in list(trees) if i % 2 == 0 else list(trees)[::-1]:
                lock = ["lock", args.profile, "--variant", "pypi", "--ignore-pip-config", "--json"]
                seconds, stdout = wall(tree, [*lock, "-o", f"{out}/pylock.{tree}.toml"])
                doc = json.loads(stdout)
                result = doc["result"] if "ok" in doc else doc  # the --json envelope, or older
                own[tree].append(seconds - result["resolution"]["seconds"])
    b = statistics.median(base)
    print(f"python -c pass: {b * 1000:.1f} ms (median of {args.runs}); load {os.getloadavg()}")
    for name in cases:
        o, n = (statistics.median(times[(t, name)]) for t in ("old", "new"))
        print(f"{name:26s} old {o * 1000:6.1f} ms ({o / b:5.1f}x)   new {n * 1000:6.1f} ms "
              f"({n / b:5.1f}x)")  # fmt: skip
    for tree, values in own.items():
        runs = ", ".join(f"{v * 1000:.0f}" for v in values)
        print(f"lock {args.profile}, wall minus uv's own time, {tree}: median "
              f"{statistics.median(values) * 1000:.0f} ms (runs: {runs})")  # fmt: skip


if __name__ == "__main__":
    main()
