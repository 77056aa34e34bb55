"""Timing a command as a person runs it, and racing several tools fairly (benchmarks' helpers)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def own_provision_cache(env: dict[str, str], folder: Path | str) -> dict[str, str]:
    """`env` with provision's own small caches (a lock's stored uv input, provision/lock/early.py)
    in `folder` through XDG_CACHE_HOME, and uv's cache pinned where it is now (warm, shared by
    every tool timed), which would otherwise move with XDG_CACHE_HOME."""
    from provision.uv import uv_bin

    where = subprocess.run([uv_bin(), "cache", "dir"], capture_output=True, text=True, env=env)
    pinned = {"UV_CACHE_DIR": where.stdout.strip()} if where.returncode == 0 else {}
    return {**env, **{k: v for k, v in pinned.items() if v}, "XDG_CACHE_HOME": str(folder)}


def timed(command: Sequence[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds one fresh process of `command` takes; a failure raises with its stderr's tail."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def race(tools: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """Every tool's times over `runs` runs, after one untimed run of each warms the caches; the
    runs are interleaved so that network weather hits all tools alike."""
    for run in tools.values():  # warm every cache once, untimed
        run()
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(runs):
        for name, run in tools.items():
            times[name].append(run())
    return times
