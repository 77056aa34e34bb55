"""Download speed and resume cost: `provision download` against `hf download`, in one run.

Both tools fetch the same multi-file repository (a few hundred MB) from the local test hub
(tests/servers/hub.py) into empty caches, several rounds in alternating order; the figure is the
ratio of throughputs (provision / hf; the target is >= 1.0). Then each tool downloads one large
file, is killed with SIGKILL once the server has sent half of it, and is run again: the figure is
how many bytes the server had to send twice (the target for provision: under one chunk; hf starts
the file over).

    python benchmarks/download.py [--size-mb 320] [--files 4] [--rounds 3] [--json]

Wall-clock time of each command is measured, interpreter start-up included (what a user waits for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hub.helpers import write_profile  # noqa: E402
from tests.servers.hub import HubServer  # noqa: E402

MB = 1_000_000


def _hf_cli() -> str:
    found = shutil.which("hf") or str(Path(sys.executable).parent / "hf")
    if not Path(found).exists():
        sys.exit("the `hf` command (huggingface_hub's CLI) is not installed")
    return found


def _make_repo(folder: Path, files: int, size: int) -> int:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bench"}\n')
    (folder / "tokenizer.json").write_text('{"version": "1.0"}\n' * 2000)
    each = size // files
    for i in range(files):
        (folder / f"model-{i + 1:05d}-of-{files:05d}.safetensors").write_bytes(rng.randbytes(each))
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _env(work: Path, hub: HubServer, cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PROVISION_"))}
    env.update(
        {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(work / cache),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            # Off for both (huggingface_hub 2.x no longer uses hf_transfer; said for the record).
            "HF_HUB_ENABLE_HF_TRANSFER": "0",
            "PROVISION_PROFILES_DIR": str(work / "profiles"),
            "PROVISION_LOCK_DIR": str(work / "locks"),
        }
    )
    return env


def _commands(hub: HubServer, profile: str, repo: str) -> dict[str, list[str]]:
    return {
        "provision": [sys.executable, "-m", "provision", "--json", "download", profile,
                      "--source", hub.url],
        "hf": [_hf_cli(), "download", repo],
    }  # fmt: skip


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{done.stderr[-2000:]}")
    return elapsed


def throughput(work: Path, hub: HubServer, rounds: int) -> dict[str, object]:
    commands = _commands(hub, "bench", "bench/multi")
    total = hub.repos["bench/multi"].commits[hub.repos["bench/multi"].refs["main"]]
    size = sum(f.size for f in total.values())
    seconds: dict[str, list[float]] = {"provision": [], "hf": []}
    for round_no in range(rounds):
        order = ["provision", "hf"] if round_no % 2 == 0 else ["hf", "provision"]
        for tool in order:
            cache = work / f"cache-{tool}"
            shutil.rmtree(cache, ignore_errors=True)
            seconds[tool].append(_timed(commands[tool], _env(work, hub, cache.name)))
    median = {tool: statistics.median(values) for tool, values in seconds.items()}
    return {
        "bytes": size,
        "rounds": rounds,
        "seconds": seconds,
        "mb_per_s": {tool: size / MB / median[tool] for tool in median},
        "ratio": median["hf"] / median["provision"],  # throughput ratio provision / hf
    }


def resume_cost(work: Path, hub: HubServer, size: int, rate: int) -> dict[str, object]:
    commands = _commands(hub, "bench-one", "bench/one")
    key = "bench/one/model.safetensors"
    out: dict[str, object] = {"file_bytes": size, "throttle_mb_per_s": rate / MB}
    for tool, command in commands.items():
        cache = work / f"kill-{tool}"
        shutil.rmtree(cache, ignore_errors=True)
        env = _env(work, hub, cache.name)
        hub.clear_faults()
        hub.reset_counters()
        hub.fault("model.safetensors", throttle=rate)
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 600
        while hub.bytes_for(key) < size // 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{tool} ended before half of the file was sent")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hub.wait_idle()
        first = hub.bytes_for(key)
        hub.clear_faults()
        hub.reset_counters()
        _timed(command, env)
        second = hub.bytes_for(key)
        ranges = [r.range for r in hub.requests if r.file == key and r.method == "GET"]
        kept = int(ranges[0][6:].split("-")[0]) if ranges and ranges[0] else 0
        out[tool] = {
            "sent_before_kill": first,
            "kept_on_disk": kept,  # where the rerun asked to start
            "sent_on_rerun": second,
            # Bytes still in the kernel's socket buffers at the kill never reached any process:
            # no downloader can keep those.
            "sent_twice": first + second - size,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=320, help="multi-file repository size")
    parser.add_argument("--files", type=int, default=4, help="weight shards in it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kill-file-mb", type=int, default=200)
    parser.add_argument("--kill-rate-mb", type=int, default=50, help="throttle while killing")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="provision-bench-", dir=args.dir))
    try:
        with HubServer(work / "hub") as hub:
            _make_repo(work / "src" / "multi", args.files, args.size_mb * MB)
            hub.add_repo("bench/multi", work / "src" / "multi")
            one = work / "src" / "one"
            one.mkdir(parents=True)
            (one / "model.safetensors").write_bytes(
                random.Random(1).randbytes(args.kill_file_mb * MB)
            )
            hub.add_repo("bench/one", one)
            write_profile(work / "profiles", "bench", "bench/multi")
            write_profile(work / "profiles", "bench-one", "bench/one")
            result = {
                "throughput": throughput(work, hub, args.rounds),
                "kill_at_half": resume_cost(
                    work, hub, args.kill_file_mb * MB, args.kill_rate_mb * MB
                ),
                "cpus": os.cpu_count(),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t = result["throughput"]
    k = result["kill_at_half"]
    print(f"Repository: {t['bytes'] / MB:.0f} MB in {args.files + 2} files, {t['rounds']} rounds")
    for tool in ("provision", "hf"):
        times = ", ".join(f"{s:.2f}" for s in t["seconds"][tool])
        print(f"  {tool:9s} {t['mb_per_s'][tool]:7.1f} MB/s (median; runs: {times} s)")
    print(f"  throughput ratio provision / hf: {t['ratio']:.2f} (target >= 1.0)")
    print(f"Kill at half of a {k['file_bytes'] / MB:.0f} MB file, then run again:")
    for tool in ("provision", "hf"):
        row = k[tool]
        print(
            f"  {tool:9s} sent before kill {row['sent_before_kill'] / MB:6.1f} MB, kept "
            f"{row['kept_on_disk'] / MB:6.1f} MB, on rerun {row['sent_on_rerun'] / MB:6.1f} MB, "
            f"sent twice {row['sent_twice'] / MB:7.3f} MB"
        )
    print("  (one chunk: huggingface_hub reads and resumes in 10 MiB = 10.486 MB pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
