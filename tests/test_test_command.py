"""The test command a newcomer runs: one line, the same in docs/testing.md and .ci/run, and the
script it starts installs exactly the system packages that are missing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-test-deps"


def documented_command() -> str:
    text = (REPO / "docs" / "testing.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"<!-- test-command -->\n```sh\n(.*?)\n```", text, re.DOTALL)
    return block.strip()


def test_ci_runs_exactly_the_documented_line():
    line = documented_command()
    assert "\n" not in line and line.startswith("scripts/install-test-deps && ")
    assert line.endswith("python -m pytest -q")
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert line in ci_lines


def _fake_tools(tmp_path: Path, installed: set[str]) -> tuple[dict[str, str], Path]:
    """dpkg-query that knows `installed`, apt-get that logs its arguments, sudo that runs."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    known = " ".join(sorted(installed))
    scripts = {
        "dpkg-query": f'for p in {known}; do [ "$p" = "${{@: -1}}" ] && '
        'printf "install ok installed" && exit 0; done; exit 1',
        "apt-get": f'echo "$@" >> {log}',
        "sudo": '"$@"',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def listed_packages() -> list[str]:
    lines = (REPO / "scripts" / "test-packages.txt").read_text(encoding="utf-8").splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def test_the_package_list_holds_what_the_docker_and_exfat_tests_need():
    assert {"podman", "runc", "debootstrap", "docker-registry", "exfat-fuse", "exfatprogs"} <= set(
        listed_packages()
    )


def test_install_script_installs_only_the_missing_packages(tmp_path):
    env, log = _fake_tools(tmp_path, {"podman", "runc"})
    subprocess.run([str(SCRIPT)], env=env, check=True, capture_output=True, text=True)
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"
    wanted = [p for p in listed_packages() if p not in ("podman", "runc")]
    assert calls[1] == "install -y -qq " + " ".join(wanted)


def test_install_script_does_nothing_when_all_are_there(tmp_path):
    env, log = _fake_tools(tmp_path, set(listed_packages()))
    subprocess.run([str(SCRIPT)], env=env, check=True, capture_output=True, text=True)
    assert not log.exists()  # no apt-get update: a rerun costs nothing and needs no network


def _pytest_without_podman(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest on the Docker tests with podman, runc, debootstrap and docker-registry hidden:
    PATH holds only this Python, as on a machine where none of them is installed."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    bt = str(tmp_path / "basetemp")
    return subprocess.run(
        # its own basetemp: in the shared /tmp/pytest-of-USER it would first clear out old runs
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", bt, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_without_podman_the_podman_tests_stop_the_run_with_one_message(tmp_path):
    """Not one error per test (the fixture failing 13 times), not a skip: one message, naming
    what is missing and both ways out, before any test runs."""
    proc = _pytest_without_podman(tmp_path, "tests/docker")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # pytest's usage error
    (line,) = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
    assert "marked 'podman' need podman, runc, debootstrap, docker-registry" in line
    assert "scripts/install-test-deps" in line and '-m "not podman"' in line
    assert "passed" not in out and "failed" not in out


def test_without_podman_the_marker_leaves_those_tests_out(tmp_path):
    # test_engine.py's two tests need podman; a quick test beside them does not
    quick = "tests/test_bounds.py::test_bounds_hold_in_the_library_too"
    proc = _pytest_without_podman(
        tmp_path, "-m", "not podman", "tests/docker/test_engine.py", quick
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"\b1 passed, 2 deselected\b", out), out


def test_the_slurm_cluster_tests_are_marked_root_from_their_fixture(tmp_path):
    """The one-host Slurm cluster starts munged and slurmd as root: `-m "not root"` (a machine
    without root) leaves its tests out, as it does the mount tests; a test beside them stays."""
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "--basetemp", str(tmp_path / "bt"), "-m", "not root", "tests/cluster/test_render.py"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test_the_launcher_lines_expand_on_every_node_of_a_real_job" not in out
    assert "test_the_script_carries_the_options_and_is_valid_bash" in out
    assert re.search(r"\b1 deselected\b", out), out
