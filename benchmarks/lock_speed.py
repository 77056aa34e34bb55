"""How much `provision lock` costs over the tools users would otherwise run, in one run.

    python benchmarks/lock_speed.py [--profile qwen2.5-vl-7b] [--runs 3] [--no-pip-compile]
                                    [--old OLD]  # OLD: git archive REV | tar -x -C OLD

Two scenarios, each timed as a person runs it (a fresh process per run, caches warm after a first
untimed run of each tool, runs interleaved so that network weather hits all tools alike):

1. a built-in profile against PyPI (PyPI's torch build): `provision lock` vs the `uv pip compile`
   a user would type for the same requirements and index, and `pip-compile` (pip-tools) where it
   can run (it resolves for this machine's Python only, which here is the target's, 3.11);
2. the local PEP 503 index from tests/servers with a CUDA variant routed to its own index:
   `provision lock` vs `uv pip compile --default-index SIMPLE --index TORCH_INDEX`.

Both sides get the same requirements, indexes, uv binary, output options (pylock.toml with
hashes, the previous output as preferences) and interpreter (`--python`: provision gives uv this
one; without it a bare `uv pip compile` searches PATH for a python3.X: about 25 ms a run here
with .venv/bin first on PATH, 0.5 s through pyenv's shims, which flattered the ratio).
provision runs as users run it, through its console script.

Prints median and best seconds, the ratio provision / uv (target: at most 1.2) and the seconds
provision adds (its fixed cost, 50-100 ms here, dominates when uv needs only 0.02 s).
"provision lock" runs as a re-lock with the same arguments does: uv starts on the input stored by
the run before (provision/lock/early.py), which every timed run after the untimed warm-up finds;
"lock, nothing stored" is the same command with an empty cache each run (as a first lock with
these arguments, or one whose input changed), so both cases are shown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import own_provision_cache, race, timed  # noqa: E402
from provision.hardware.driver import DriverFacts  # noqa: E402
from provision.profiles import load_profile  # noqa: E402
from provision.torch_select import plan_torch  # noqa: E402
from provision.uv import uv_bin  # noqa: E402

PLATFORM = "x86_64-manylinux_2_28"
# What a user types: the console script installed beside this interpreter (`python -m provision`
# where there is none, which also pays for runpy).
_SCRIPT = Path(sys.executable).with_name("provision")
PROVISION = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "provision"]
PYPI = "https://pypi.org/simple"


def report(title: str, times: dict[str, list[float]]) -> None:
    """Median and best run per tool; ratios against uv for both (PyPI's answer times vary by
    seconds from run to run, so the best run shows the cost that is provision's own)."""
    print(f"\n{title}")
    med = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    for name in times:
        print(
            f"  {name:<22} median {med[name]:7.2f} s (x{med[name] / med['uv pip compile']:5.2f})"
            f"   best {best[name]:7.2f} s (x{best[name] / best['uv pip compile']:5.2f})"
        )
    for label, values in (("median", med), ("best", best)):
        ratio = values["provision lock"] / values["uv pip compile"]
        verdict = "ok" if ratio <= 1.2 else "over target"
        extra = values["provision lock"] - values["uv pip compile"]
        print(
            f"  ratio provision/uv ({label}) = {ratio:.2f} (target <= 1.2: {verdict}); "
            f"provision adds {extra:.2f} s"
        )


def base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_INDEX", "PIP_"))}
    env.update({"UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1", "PIP_CONFIG_FILE": os.devnull})
    env["PROVISION_LOCK_DIR"] = str(work / "locks")
    return own_provision_cache(env, work / "cache")  # first_run empties it


def first_run(command: list[str], env: dict[str, str], cwd: Path, work: Path) -> float:
    """`command` with nothing stored from an earlier run (an empty XDG_CACHE_HOME each time):
    uv starts only once provision has parsed its command line and computed uv's input, as on
    the first lock with these arguments (the previous lock is still there for uv, as for the
    bare `uv pip compile -o`)."""
    fresh = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    try:
        return timed(command, {**env, "XDG_CACHE_HOME": str(fresh)}, cwd)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def uv_compile(requirements: Path, python: str, index: str, output: Path, *extra: str) -> list[str]:
    """The `uv pip compile` a user would type for a pylock.toml with hashes, in an activated
    environment of the target Python: given that interpreter, as provision gives it, so that
    neither side searches PATH for a python3.X (through pyenv's shims that alone is 0.5 s)."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return [
        uv_bin(),
        "pip",
        "compile",
        str(requirements),
        "--format",
        "pylock.toml",
        "--generate-hashes",
        "--python-version",
        python,
        "--python-platform",
        PLATFORM,
        "--default-index",
        index,
        *extra,
        *(["--python", sys.executable] if python == here else []),
        "-o",
        str(output),
    ]


def pip_tools(work: Path) -> Path | None:
    """A throwaway venv with pip-tools (installed from PyPI by uv); None if that fails."""
    venv = work / "pip-tools"
    uv = uv_bin()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    made = subprocess.run(
        [uv, "venv", str(venv), "--python", sys.executable, "--seed"], env=env, capture_output=True
    )
    if made.returncode != 0:
        return None
    installed = subprocess.run(
        [uv, "pip", "install", "--python", str(venv / "bin" / "python"), "pip-tools"],
        env=env,
        capture_output=True,
        text=True,
    )
    if installed.returncode != 0:
        print("pip-tools could not be installed:", installed.stderr[-500:])
        return None
    return venv / "bin" / "pip-compile"


def scenario_pypi(
    profile_name: str, runs: int, with_pip_compile: bool, work: Path, old: Path | None = None
) -> None:
    profile = load_profile(profile_name)
    spec = profile.task("infer")
    python = spec.python or profile.python
    facts = DriverFacts(None, None, [], [], "benchmark", [])
    plan = plan_torch(spec.packages, facts, python, variant="pypi")
    req = work / "requirements.in"
    req.write_text("\n".join(plan.requirements) + "\n")
    env = base_env(work)
    lock = [
        *PROVISION,
        "lock",
        profile_name,
        "--variant",
        "pypi",
        "--ignore-pip-config",
        "-o",
        str(work / "pylock.provision.toml"),
    ]
    tools: dict[str, Callable[[], float]] = {
        "provision lock": lambda: timed(lock, env, REPO),
        "uv pip compile": lambda: timed(
            uv_compile(req, python, PYPI, work / "pylock.uv.toml"), env, work
        ),
        "lock, nothing stored": lambda: first_run(lock, env, REPO, work),
    }
    if old is not None:
        # an older tree (git archive REV | tar -x -C OLD): `python -m provision` with PYTHONPATH,
        # as the console script here runs this tree; runpy costs it 2-3 ms more
        old_lock = [sys.executable, "-m", "provision", *lock[len(PROVISION) :]]
        old_lock[-1] = str(work / "pylock.old.toml")
        old_env = {**env, "PYTHONPATH": str(old)}
        tools["lock, older tree"] = lambda: timed(old_lock, old_env, old)
    pip_compile = pip_tools(work) if with_pip_compile else None
    if pip_compile is not None:
        tools["pip-compile"] = lambda: timed(
            [
                str(pip_compile),
                "--generate-hashes",
                "--index-url",
                PYPI,
                "--no-header",
                "--quiet",
                "-o",
                str(work / "requirements.txt"),
                str(req),
            ],
            env,
            work,
        )
    print(
        f"Scenario 1: {profile_name} (infer) against PyPI, torch {plan.torch_version} "
        f"[{plan.variant}], Python {python}; requirements: {', '.join(plan.requirements)}"
    )
    if with_pip_compile and pip_compile is None:
        print("  pip-compile: could not be set up here (see above)")
    try:
        times = race(tools, runs)
    except RuntimeError as exc:
        if "pip-compile" not in str(exc):
            raise
        print(f"  pip-compile could not run: {str(exc)[:400]}")
        tools.pop("pip-compile")
        times = race(tools, runs)
    report(f"Scenario 1, {runs} runs each:", times)


def scenario_local(runs: int, work: Path) -> None:
    from tests.lock.conftest import write_profile
    from tests.servers.pypi_index import build_tree, serve

    with serve(build_tree(work / "index")) as index:
        profiles = work / "profiles"
        write_profile(profiles, "bench-vl")
        env = base_env(work)
        env.update({"PROVISION_PROFILES_DIR": str(profiles), "PIP_INDEX_URL": index.simple})
        env.pop("PIP_CONFIG_FILE")
        env["PIP_CONFIG_FILE"] = os.devnull
        torch_index = index.torch_template.format(variant="cu124")
        req = work / "local.in"
        req.write_text(
            "torch==2.4.0+cu124\ntorchvision==0.19.0+cu124\ntransformers==4.44.0\ntinylib==1.0\n"
        )
        lock = [
            *PROVISION,
            "lock",
            "bench-vl",
            "--driver",
            "550.54.14",
            "--torch-index",
            index.torch_template,
            "-o",
            str(work / "pylock.local.toml"),
        ]
        tools = {
            "provision lock": lambda: timed(lock, env, REPO),
            "uv pip compile": lambda: timed(
                uv_compile(
                    req, "3.11", index.simple, work / "pylock.localuv.toml", "--index", torch_index
                ),
                env,
                work,
            ),
            "lock, nothing stored": lambda: first_run(lock, env, REPO, work),
        }
        print("\nScenario 2: local PEP 503 index, torch 2.4.0+cu124 routed to its own index")
        report(f"Scenario 2, {runs} runs each:", race(tools, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="qwen2.5-vl-7b")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-pip-compile", action="store_true")
    parser.add_argument(
        "--old", type=Path, help="also time the re-lock of an older tree (from git archive)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lock-speed-"))
    try:
        scenario_pypi(args.profile, args.runs, not args.no_pip_compile, work, args.old)
        scenario_local(args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
