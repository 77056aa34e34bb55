"""`provision setup --from-lock` into a fresh folder against raw `uv venv` + `uv pip sync`.

What a user rebuilding someone else's environment would otherwise run is uv by hand:

    uv venv --python 3.11 ENV && uv pip sync --require-hashes --python ENV/bin/python LOCK

`provision setup PROFILE --from-lock LOCK --env ENV` does that (the env stage) and more: it checks
the lock fits the machine, verifies the weights already in the cache, applies the profile's fixes
and runs a smoke inference. The figure the issue sets a target for (at most 1.3x) is the env stage
against raw uv; the whole command's time is printed beside it, with every stage. Because one env
build is a few seconds and a busy machine moves single runs by more than the difference, the env
stage is also timed alone (`ensure_env`, as setup calls it) over more alternating rounds.

Setting (not timed): a tiny random LLaVA built with transformers 4.51.3 served by the local test
hub (tests/servers/hub.py), a profile for it (torch 2.13.0 CPU from the wheel folder named by
PIP_FIND_LINKS, transformers 4.51.3, the group-beam-search-dtype fix), and one full
`provision setup` that writes the lock and warms uv's cache, the weights cache and the bytecode
cache. Then each round makes two fresh environments from that lock, one each way, in alternating
order. Wall-clock time of each command, interpreter start-up included.

    python benchmarks/setup.py [--rounds 3] [--env-rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tomli_w  # noqa: E402

from provision.resources import builtin_dir  # noqa: E402
from provision.uv import uv_bin  # noqa: E402
from tests.servers.hub import HubServer  # noqa: E402
from tests.tinymodels import build_tiny_vlm, pycache_dir  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = "tiny-org/tiny-llava-bench"
PROFILE = "tiny-llava-bench"
PACKAGES = ["torch==2.13.0", "transformers==4.51.3", "pillow", "jinja2"]


def _wheel_folder() -> str:
    for item in os.environ.get("PIP_FIND_LINKS", "").split():
        if Path(item).is_dir() and any(Path(item).glob("torch-*.whl")):
            return item
    sys.exit("PIP_FIND_LINKS names no folder with the CPU torch wheel; see DESIGN.md")


def _builder(work: Path, wheels: str) -> Path:
    """An interpreter with the profile's transformers, to write a checkpoint 4.51.3 reads."""
    env = work / "builder"
    uv = uv_bin()
    subprocess.run([uv, "venv", "--quiet", "--python", "3.11", str(env)], check=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(env / "bin" / "python")]
        + ["--find-links", wheels, "torch==2.13.0+cpu", "transformers==4.51.3", "pillow"],
        check=True,
    )
    return env / "bin" / "python"


def _profile(folder: Path) -> None:
    data = tomllib.loads((builtin_dir("profiles") / "llava-1.5-7b-hf.toml").read_text())
    data["name"] = PROFILE
    data["source"] = {"huggingface": REPO, "gated": False}
    data["tasks"] = {"infer": {"stack": "transformers", "packages": PACKAGES}}
    data["smoke"] = {"prompt": "What is in this picture?", "max_new_tokens": 6}
    data["fixes"] = ["group-beam-search-dtype"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{PROFILE}.toml").write_text(tomli_w.dumps(data))


def _environ(work: Path, hub: HubServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PROVISION_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {
            "PROVISION_PROFILES_DIR": str(work / "profiles"),
            "PROVISION_LOCK_DIR": str(work / "locks"),
            "PROVISION_DATA_DIR": str(work / "data"),
            "PROVISION_SOURCES": hub.url,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPYCACHEPREFIX": str(pycache_dir()),
            "UV_PYTHON_DOWNLOADS": "never",
        }
    )
    return env


def _setup(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "provision", "--json", "setup", PROFILE, *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"provision setup failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, json.loads(done.stdout)


def _raw(lock: Path, target: Path, env: dict[str, str]) -> float:
    uv = uv_bin()
    start = time.perf_counter()
    subprocess.run([uv, "venv", "--quiet", "--python", "3.11", str(target)], check=True, env=env)
    subprocess.run(
        [uv, "pip", "sync", "--quiet", "--preview-features", "pylock", "--require-hashes"]
        + ["--python", str(target / "bin" / "python"), str(lock)],
        check=True,
        env=env,
    )
    return time.perf_counter() - start


def _installed(python: Path) -> list[str]:
    done = subprocess.run(
        [uv_bin(), "pip", "freeze", "--python", str(python)],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(done.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env-rounds", type=int, default=7, help="rounds of the env stage alone")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()
    wheels = _wheel_folder()
    work = Path(tempfile.mkdtemp(prefix="provision-bench-setup-"))
    try:
        model = build_tiny_vlm(work / "model", "llava", _builder(work, wheels))
        with HubServer(work / "hub") as hub:
            hub.add_repo(REPO, model)
            _profile(work / "profiles")
            env = _environ(work, hub)
            # the only CPU torch here is the local wheel: it is the torch index for the lock
            first_args = ["--env", str(work / "envs" / "first"), "--torch-index", wheels]
            _, first = _setup(first_args, env)
            given = work / "given" / "pylock.tiny-llava-bench.toml"  # someone else's lock
            given.parent.mkdir()
            shutil.copy(first["lock_file"], given)

            raw_times: list[float] = []
            setup_times: list[float] = []
            stage_times: dict[str, list[float]] = {}
            env_steps: dict[str, list[float]] = {}  # inside the env stage (EnvResult.timings)
            for i in range(opts.rounds):
                order = ("provision", "raw") if i % 2 == 0 else ("raw", "provision")
                for who in order:
                    if who == "raw":
                        raw_times.append(_raw(given, work / "envs" / f"raw-{i}", env))
                        continue
                    target = work / "envs" / f"provision-{i}"
                    seconds, result = _setup(["--from-lock", str(given), "--env", str(target)], env)
                    setup_times.append(seconds)
                    for stage in result["stages"]:
                        stage_times.setdefault(stage["stage"], []).append(stage["seconds"])
                    for step, secs in result["outputs"]["env"]["timings"].items():
                        env_steps.setdefault(step, []).append(secs)
            # The env stage alone, as setup calls it, more rounds: it is short and the machine's
            # load moves single runs by more than the difference being measured.
            from provision.envs import ensure_env

            alone_ours: list[float] = []
            alone_raw: list[float] = []
            for i in range(opts.env_rounds):
                order = ("provision", "raw") if i % 2 == 0 else ("raw", "provision")
                for who in order:
                    if who == "raw":
                        alone_raw.append(_raw(given, work / "envs" / f"raw-alone-{i}", env))
                        continue
                    start = time.perf_counter()
                    ensure_env(work / "envs" / f"alone-{i}", given, wheels)
                    alone_ours.append(time.perf_counter() - start)
            same = _installed(work / "envs" / "raw-0" / "bin" / "python") == _installed(
                work / "envs" / "provision-0" / "bin" / "python"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw = statistics.median(raw_times)
    whole = statistics.median(setup_times)
    stages = {name: statistics.median(times) for name, times in stage_times.items()}
    figures = {
        "rounds": opts.rounds,
        "raw_uv_venv_sync_s": round(raw, 2),
        "setup_from_lock_s": round(whole, 2),
        "setup_stages_s": {name: round(s, 2) for name, s in stages.items()},
        "env_stage_steps_s": {k: round(statistics.median(v), 2) for k, v in env_steps.items()},
        "env_stage_vs_raw": round(stages.get("env", float("nan")) / raw, 2),
        "whole_setup_vs_raw": round(whole / raw, 2),
        "env_alone_s": round(statistics.median(alone_ours), 2),
        "env_alone_raw_s": round(statistics.median(alone_raw), 2),
        "env_alone_vs_raw": round(statistics.median(alone_ours) / statistics.median(alone_raw), 2),
        "same_installed_set": same,
        "raw_runs_s": [round(t, 2) for t in raw_times],
        "setup_runs_s": [round(t, 2) for t in setup_times],
    }
    if opts.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"raw uv venv + uv pip sync:        {raw:6.2f} s (median of {opts.rounds})")
    print(f"provision setup --from-lock:      {whole:6.2f} s, by stage:")
    for name, seconds in stages.items():
        print(f"    {name:8s} {seconds:6.2f} s")
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in figures["env_stage_steps_s"].items())
    print(f"    (env stage: {steps})")
    print(f"env stage / raw uv:               {figures['env_stage_vs_raw']:.2f}x (target <= 1.3x)")
    print(f"whole setup / raw uv:             {figures['whole_setup_vs_raw']:.2f}x "
          "(adds weights verification, fixes and a smoke inference)")  # fmt: skip
    print(
        f"env stage alone (ensure_env, {opts.env_rounds} rounds): "
        f"{figures['env_alone_s']:.2f} s vs raw {figures['env_alone_raw_s']:.2f} s = "
        f"{figures['env_alone_vs_raw']:.2f}x (target <= 1.3x)"
    )
    print(f"same installed set (uv pip freeze): {same}")


if __name__ == "__main__":
    main()
