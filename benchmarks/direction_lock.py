"""What one direction lock costs against what users would otherwise run, in one run.

    python benchmarks/direction_lock.py [--direction okvqa-vllm-swift] [--runs 1]

For a built-in direction, against PyPI with PyPI's torch build (as the committed locks are made),
each timed as a person runs it (a fresh process, caches warm after one untimed run of each, runs
interleaved so that network weather hits all alike, no previous lock: --upgrade):

1. `provision direction lock NAME`: every member's every task in one resolution, one lockfile;
2. `provision lock PROFILE --task T` for each member and task: the per-profile locks (and
   environments) a team keeps without directions, summed;
3. `uv pip compile` of the union of the members' requirements with the same index and torch
   build: one environment made by hand, without the conflict report, the [tool.provision]
   record or the staleness check.

Prints median seconds, the ratio direction / per-profile sum (how much less time one joint
lock takes than the separate ones) and direction / uv (what provision adds over uv itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import race, timed  # noqa: E402
from provision.directions import builtin_directions  # noqa: E402
from provision.directions.lock import prepare_lock  # noqa: E402
from provision.hardware.driver import DriverFacts  # noqa: E402
from provision.uv import uv_bin  # noqa: E402

PLATFORM = "x86_64-manylinux_2_28"
PYPI = "https://pypi.org/simple"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--direction", default="okvqa-vllm-swift")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    (direction,) = [d for d in builtin_directions() if d.name == args.direction]
    facts = DriverFacts(None, None, [], [], "benchmark: PyPI's build", [])
    inputs = prepare_lock(direction, variant="pypi", facts=facts, use_pip_config=False)
    union = list(dict.fromkeys(r for s in inputs.all_sets() for r in s.requirements))
    pairs = [(m.profile, t) for m in direction.members for t in m.tasks]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PROVISION_PROFILES_DIR"] = ""
    provision = [sys.executable, "-m", "provision"]
    common = ["--variant", "pypi", "--ignore-pip-config", "--upgrade"]
    with tempfile.TemporaryDirectory(prefix="bench-direction-") as tmp:
        work = Path(tmp)
        (work / "requirements.in").write_text("\n".join(union) + "\n")

        def joint() -> float:
            out = work / "pylock.direction-bench.toml"
            return timed(
                [*provision, "direction", "lock", direction.name, *common, "-o", str(out)],
                env,
                work,
            )

        def separate() -> float:
            total = 0.0
            for profile, task in pairs:
                out = work / f"pylock.{profile.replace('.', '_')}--{task}.toml"
                command = [*provision, "lock", profile, "--task", task, *common, "-o", str(out)]
                total += timed(command, env, work)
            return total

        def by_hand() -> float:
            command = [uv_bin(), "pip", "compile", "requirements.in", "--format",
                       "pylock.toml", "--generate-hashes", "--python-version", inputs.python,
                       "--python-platform", PLATFORM, "--default-index", PYPI, "--no-config",
                       "--quiet", "-o", "pylock.toml"]  # fmt: skip
            return timed(command, env, work)

        times = race(
            {"direction lock": joint, "per-profile locks": separate, "uv by hand": by_hand},
            args.runs,
        )
    results = {name: statistics.median(values) for name, values in times.items()}
    print(f"direction {direction.name}: {len(direction.members)} members, {len(pairs)} tasks")
    for name, seconds in results.items():
        print(f"  {name:<18} {seconds:7.2f} s")
    print(
        f"  direction / per-profile: {results['direction lock'] / results['per-profile locks']:.2f}"
        f"   direction / uv: {results['direction lock'] / results['uv by hand']:.2f}"
        f"   (provision adds {results['direction lock'] - results['uv by hand']:+.2f} s)"
    )


if __name__ == "__main__":
    main()
