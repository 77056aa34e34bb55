"""How long `provision check PROFILE --gpu ...` and `provision --help` take as whole processes,
next to `python -c pass`.

All run alternately in one session (same machine state), N times each; medians and the ratios are
printed. Targets: under 0.3 s wall (issue 2); at most 10x `python -c pass` for check and --help
(issue 17). Run it with the bytecode compiled, as an install leaves it (pip compiles at install;
`python -m compileall` the venv and the package when PYTHONDONTWRITEBYTECODE is set).

    python benchmarks/check_latency.py [--runs 30] [--profile qwen2.5-vl-7b] [--gpu "RTX 4090"]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--profile", default="qwen2.5-vl-7b")
    parser.add_argument("--gpu", default="RTX 4090")
    args = parser.parse_args()

    exe = shutil.which("provision") or sys.exit("`provision` is not on PATH: pip install . first")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # Then nothing was compiled at import time; pip compiles at install, uv needs
        # --compile-bytecode. Without .pyc files every run compiles typer and rich from source.
        print("note: PYTHONDONTWRITEBYTECODE is set; times assume an install that compiled .pyc")
    check = [exe, "check", args.profile, "--gpu", args.gpu]
    label = f"provision check {args.profile} --gpu '{args.gpu}'"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        label: check,
        label + " --json": [*check, "--json"],
        "provision --help": [exe, "--help"],
        "provision check --help": [exe, "check", "--help"],
    }
    for cmd in commands.values():  # warm the page cache and bytecode once
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(wall(cmd))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':60} {'median s':>9} {'p90 s':>7} {'x python':>9}")
    for name, values in times.items():
        values.sort()
        med, p90 = statistics.median(values), values[int(0.9 * (len(values) - 1))]
        print(f"{name:60} {med:9.3f} {p90:7.3f} {med / base:9.1f}")
    median = statistics.median(times[label])
    print(f"\ntarget: under 0.300 s -> {'met' if median < 0.3 else 'NOT met'} ({median:.3f} s)")
    for name, values in times.items():
        if name != "python -c pass":
            ratio = statistics.median(values) / base
            print(
                f"target <= 10x python -c pass: {name}: {ratio:.1f}x",
                "met" if ratio <= 10 else "NOT met",
            )


if __name__ == "__main__":
    main()
