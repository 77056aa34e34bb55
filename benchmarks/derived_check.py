"""`provision check <org/name>` on a derived profile: requests a cold check makes, and the warm
(cached, --offline) wall time next to a built-in profile's check and `python -c pass`.

A local hub (tests/servers/hub.py) serves Qwen2.5-VL-7B-Instruct's real configs
(tests/fixtures/hub-configs) with 5 sparse safetensors shards whose headers transformers builds
on the meta device. For comparison it also counts the requests huggingface_hub's own
`get_safetensors_metadata` makes for the same repo (what a user would script instead).

    python benchmarks/derived_check.py [--runs 20] [--shards 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPO = "Qwen/Qwen2.5-VL-7B-Instruct"


def _last(path: str) -> str:
    return path.split("?")[0].rsplit("/", 1)[-1]


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--shards", type=int, default=5)
    args = parser.parse_args()

    from tests.derive.conftest import FIXTURES, copy_configs
    from tests.derive.headers import meta_tensors, write_sparse_safetensors
    from tests.servers.hub import HubServer

    tmp = Path(tempfile.mkdtemp(prefix="derived-check-"))
    folder = copy_configs(FIXTURES / REPO.replace("/", "--"), tmp / "model")
    write_sparse_safetensors(folder, meta_tensors(folder), shards=args.shards)
    exe = shutil.which("provision") or sys.exit("`provision` is not on PATH: pip install . first")
    with HubServer(tmp / "hub") as hub:
        hub.add_repo(REPO, folder, unhashed=("*.safetensors",))
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "PROVISION_SOURCES": hub.url,
            "PROVISION_METADATA_CACHE": str(tmp / "metadata"),
            "HF_HOME": str(tmp / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        env.pop("HF_TOKEN", None)
        derived = [exe, "check", f"{REPO}@main", "--gpu", "RTX 4090"]
        hub.reset_counters()
        cold = wall(derived, env)
        requests = hub.requests
        ranged = [r for r in requests if r.range]
        print(
            f"cold check: {cold:.3f} s, {len(requests)} requests: {len(ranged)} Range reads over "
            f"{len({r.file for r in ranged})} shards + {len(requests) - len(ranged)} others "
            f"({', '.join(sorted({_last(r.path) for r in requests if not r.range}))})"
        )
        hub.reset_counters()
        code = (
            "from huggingface_hub import get_safetensors_metadata; "
            f"get_safetensors_metadata({REPO!r}, revision='main')"
        )
        hf_wall = wall([sys.executable, "-c", code], env)
        print(
            f"huggingface_hub get_safetensors_metadata alone (headers only, no configs): "
            f"{len(hub.requests)} requests, {hf_wall:.3f} s"
        )
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "provision check qwen2.5-vl-7b (built-in)": [
                exe,
                "check",
                "qwen2.5-vl-7b",
                "--gpu",
                "RTX 4090",
            ],
            f"provision check {REPO}@main --offline (warm)": [*derived, "--offline"],
        }
        for cmd in commands.values():
            wall(cmd, env)
        hub.reset_counters()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(wall(cmd, env))
        assert not hub.requests, "the warm check asked the hub"
    base = statistics.median(times["python -c pass"])
    print(f"{'command':62} {'median s':>9} {'x python':>9}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:62} {med:9.3f} {med / base:9.1f}")
    warm = statistics.median(times[f"provision check {REPO}@main --offline (warm)"])
    built = statistics.median(times["provision check qwen2.5-vl-7b (built-in)"])
    print(
        f"\nwarm derived / built-in: {warm / built:.2f}; target under 0.300 s -> "
        f"{'met' if warm < 0.3 else 'NOT met'} ({warm:.3f} s)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
