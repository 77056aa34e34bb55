"""`provision env` (--source auto) with a hanging first source, against the hand recipe, in one run.

The first source in the order accepts connections and never answers (a hung mirror); the second
is the local test hub (tests/servers/hub.py), which answers at once. Timed, alternating, as a
person waits for them (interpreter start-up included):

- `provision env --json` with PROVISION_SOURCES naming both, PROVISION_PROBE_TIMEOUT=T;
- the hand recipe: `curl --max-time T` to the first mirror, then to the second when it fails;
- with OLD (a tree from `git archive REV`), the same `provision env` of that tree.

    python benchmarks/source_probe.py [--timeout 3] [--runs 5] [--old OLD] [--json]

The figure is each one's median seconds and its ratio to this checkout's `provision env`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import race  # noqa: E402
from tests.servers.hub import HubServer  # noqa: E402


def _run(command: list[str], env: dict[str, str], cwd: Path, ok_codes: tuple[int, ...]) -> float:
    import time

    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in ok_codes:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--old", type=Path, help="an older tree (git archive REV | tar -x)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    with tempfile.TemporaryDirectory() as tmp, HubServer(Path(tmp) / "hub") as hub:
        work = Path(tmp)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PROVISION_"))}
        base.update(
            PROVISION_SOURCES=f"{hung_url},{hub.url}",
            PROVISION_PROBE_TIMEOUT=f"{args.timeout:g}",
            PROVISION_DATA_DIR=str(work / "data"),
            HOME=str(work / "home"),
        )
        cmd = [sys.executable, "-m", "provision", "env", "--json"]

        def tree(path: Path) -> float:
            return _run(cmd, {**base, "PYTHONPATH": str(path)}, work, (0,))

        def curl() -> float:
            max_time = f"{args.timeout:g}"
            first = [
                "sh",
                "-c",
                f"curl -sf --max-time {max_time} {hung_url}/api/models?limit=1 >/dev/null || "
                f"curl -sf --max-time {max_time} {hub.url}/api/models?limit=1 >/dev/null",
            ]
            return _run(first, base, work, (0,))

        tools = {"provision env": lambda: tree(ROOT), "curl, one after another": curl}
        if args.old:
            tools["provision env (old tree)"] = lambda: tree(args.old.resolve())
        times = race(tools, args.runs)
    hung.close()
    mine = statistics.median(times["provision env"])
    result = {
        name: {
            "median_s": round(statistics.median(t), 3),
            "ratio": round(statistics.median(t) / mine, 2),
        }
        for name, t in times.items()
    }
    result["probe_timeout_s"] = args.timeout
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, row in result.items():
            if isinstance(row, dict):
                print(f"{name:28} {row['median_s']:7.3f} s   x{row['ratio']}")
        print(f"(first source hangs; probe timeout {args.timeout:g} s; {args.runs} runs each)")


if __name__ == "__main__":
    main()
